-- Settle token reservations with what was really used (delta may be negative),
-- or release them, once per batch id.
-- KEYS[1]: the batch marker (same hash tag as the counters); KEYS[2]: the marker of
-- an earlier batch of the same writer that can no longer come back, to delete
-- (KEYS[1] again when there is none); KEYS[3..]: counters.
-- ARGV[1]: seconds to remember the batch; then delta and ttl per counter.
-- Only a batch that may still be replayed needs its marker: without the deletion,
-- a writer settling every few milliseconds left one marker per batch and subject
-- for the whole memory time (millions of keys a week).
if KEYS[2] ~= KEYS[1] then
  redis.call('DEL', KEYS[2])
end
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) == false then
  return 0
end
for i = 3, #KEYS do
  local delta = tonumber(ARGV[(i - 3) * 2 + 2])
  local ttl = tonumber(ARGV[(i - 3) * 2 + 3])
  if delta ~= 0 then
    local after = redis.call('INCRBY', KEYS[i], delta)
    if after < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
    if redis.call('TTL', KEYS[i]) < 0 then
      redis.call('EXPIRE', KEYS[i], ttl)
    end
  end
end
return 1
