-- Check and reserve, atomically, every limit of one subject (all keys share the
-- subject's hash tag, so this also runs on Redis Cluster).
-- KEYS: one counter per limit.
-- ARGV: then five values per limit: limit, cost, ttl seconds, enforce (1|0), kind (r|t).
--   r (requests): admitted while used + cost <= limit; reserves cost.
--   t (tokens):   admitted while something remains; reserves min(cost, what remains).
-- Returns {1, reserved_1, used_1, ...} when admitted (used = after reserving), or
-- {0, index, used} naming the first enforced limit that refused; nothing is written then.
local n = #KEYS
local used = {}
for i = 1, n do
  local base = (i - 1) * 5
  local limit = tonumber(ARGV[base + 1])
  local cost = tonumber(ARGV[base + 2])
  local enforce = ARGV[base + 4] == '1'
  local kind = ARGV[base + 5]
  local current = tonumber(redis.call('GET', KEYS[i]) or '0')
  used[i] = current
  if enforce then
    if kind == 'r' and current + cost > limit then
      return {0, i, current}
    end
    if kind == 't' and current >= limit then
      return {0, i, current}
    end
  end
end
local result = {1}
for i = 1, n do
  local base = (i - 1) * 5
  local limit = tonumber(ARGV[base + 1])
  local cost = tonumber(ARGV[base + 2])
  local ttl = tonumber(ARGV[base + 3])
  local enforce = ARGV[base + 4] == '1'
  local reserve = cost
  if enforce and ARGV[base + 5] == 't' and used[i] + cost > limit then
    reserve = limit - used[i]
  end
  local after = redis.call('INCRBY', KEYS[i], reserve)
  if redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], ttl)
  end
  result[#result + 1] = reserve
  result[#result + 1] = after
end
return result
