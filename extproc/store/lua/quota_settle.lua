-- Settle token reservations with what was really used (delta may be negative),
-- or release them, once per batch id.
-- KEYS[1]: the batch marker (same hash tag as the counters); KEYS[2]: the subject's
-- overrides hash, where each limit's reset generation is (KEYS[1] when no change
-- names a generation); KEYS[3..n+2]: the n counters; KEYS[n+3..]: markers of earlier
-- batches of the same writer that can no longer come back, to delete (none, one, or
-- a few when the writer's flushes overlapped).
-- ARGV[1]: seconds to remember the batch; then per counter: delta, ttl, generation
-- field and the generation the change belongs to (both '' for a change that applies
-- whatever the generation: an operator's, or one spooled by an older version).
-- A change whose generation is no longer the limit's is skipped: an operator reset
-- the counter after the reservation was made, and what was reserved went with it.
-- Only a batch that may still be replayed needs its marker: without the deletion,
-- a writer settling every few milliseconds left one marker per batch and subject
-- for the whole memory time (millions of keys a week).
local n = (#ARGV - 1) / 4
for i = n + 3, #KEYS do
  redis.call('DEL', KEYS[i])
end
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) == false then
  return 0
end
for i = 1, n do
  local counter = KEYS[i + 2]
  local base = (i - 1) * 4 + 2
  local delta = tonumber(ARGV[base])
  local ttl = tonumber(ARGV[base + 1])
  local field = ARGV[base + 2]
  local current = delta ~= 0
  if current and field ~= '' then
    local generation = tonumber(redis.call('HGET', KEYS[2], field) or '0')
    current = generation == tonumber(ARGV[base + 3])
  end
  if current then
    local after = redis.call('INCRBY', counter, delta)
    if after < 0 then
      redis.call('SET', counter, 0, 'KEEPTTL')
    end
    if redis.call('TTL', counter) < 0 then
      redis.call('EXPIRE', counter, ttl)
    end
  end
end
return 1
