-- Settle token reservations with what was really used (delta may be negative),
-- or release them. KEYS: counters; ARGV: delta and ttl per key.
for i = 1, #KEYS do
  local delta = tonumber(ARGV[(i - 1) * 2 + 1])
  local ttl = tonumber(ARGV[(i - 1) * 2 + 2])
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
