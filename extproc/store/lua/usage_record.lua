-- Add a batch of usage to one hour's rollup, atomically, once per batch id.
-- KEYS[1]: the hour's hash.
-- ARGV[1]: seconds to keep the hour; ARGV[2]: the batch id; then groups of four:
--   field prefix (the dimensions), requests, prompt tokens, completion tokens.
-- A batch replayed from the spool after a write that did land is counted once:
-- the id is remembered in the hash itself (so this works on Redis Cluster too).
local key = KEYS[1]
if redis.call('HSETNX', key, 'batch\t' .. ARGV[2], 1) == 0 then
  return 0
end
for i = 3, #ARGV, 4 do
  local prefix = ARGV[i]
  redis.call('HINCRBY', key, prefix .. 'requests', ARGV[i + 1])
  redis.call('HINCRBY', key, prefix .. 'prompt_tokens', ARGV[i + 2])
  redis.call('HINCRBY', key, prefix .. 'completion_tokens', ARGV[i + 3])
end
if redis.call('TTL', key) < 0 then
  redis.call('EXPIRE', key, ARGV[1])
end
return 1
