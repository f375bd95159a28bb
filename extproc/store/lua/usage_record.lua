-- Add a batch of usage to one hour's rollup, atomically, once per batch id.
-- KEYS[1]: the hour's hash.
-- ARGV[1]: seconds to keep the hour; ARGV[2]: the batch id; then, per dimension set:
--   the field prefix (the dimensions), N, and N pairs of measure name and increment.
-- A batch replayed from the spool after a write that did land is counted once:
-- the id is remembered in the hash itself (so this works on Redis Cluster too).
local key = KEYS[1]
if redis.call('HSETNX', key, 'batch\t' .. ARGV[2], 1) == 0 then
  return 0
end
local i = 3
while i <= #ARGV do
  local prefix = ARGV[i]
  local pairs = tonumber(ARGV[i + 1])
  for j = 0, pairs - 1 do
    local at = i + 2 + 2 * j
    redis.call('HINCRBY', key, prefix .. ARGV[at], ARGV[at + 1])
  end
  i = i + 2 + 2 * pairs
end
if redis.call('TTL', key) < 0 then
  redis.call('EXPIRE', key, ARGV[1])
end
return 1
