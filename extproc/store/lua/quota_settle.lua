-- Settle token reservations with what was really used (delta may be negative),
-- or release them, once per batch id.
-- KEYS[1]: the batch marker (same hash tag as the counters); KEYS[2..]: counters.
-- ARGV[1]: seconds to remember the batch; then delta and ttl per counter.
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', ARGV[1]) == false then
  return 0
end
for i = 2, #KEYS do
  local delta = tonumber(ARGV[(i - 2) * 2 + 2])
  local ttl = tonumber(ARGV[(i - 2) * 2 + 3])
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
