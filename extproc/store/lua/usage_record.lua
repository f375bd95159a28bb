-- Add a batch of usage to one hour's rollup, atomically.
-- KEYS[1]: the hour's hash.
-- ARGV[1]: seconds to keep the hour; then groups of four:
--   field prefix (the dimensions), requests, prompt tokens, completion tokens.
local key = KEYS[1]
for i = 2, #ARGV, 4 do
  local prefix = ARGV[i]
  redis.call('HINCRBY', key, prefix .. 'requests', ARGV[i + 1])
  redis.call('HINCRBY', key, prefix .. 'prompt_tokens', ARGV[i + 2])
  redis.call('HINCRBY', key, prefix .. 'completion_tokens', ARGV[i + 3])
end
if redis.call('TTL', key) < 0 then
  redis.call('EXPIRE', key, ARGV[1])
end
return 1
