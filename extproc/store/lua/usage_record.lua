-- Add one request's usage to its hourly rollup, atomically.
-- KEYS[1]: the hour's hash.  ARGV: field prefix, requests, prompt tokens,
-- completion tokens, seconds to keep the hour.
local key, prefix = KEYS[1], ARGV[1]
redis.call('HINCRBY', key, prefix .. 'requests', ARGV[2])
redis.call('HINCRBY', key, prefix .. 'prompt_tokens', ARGV[3])
redis.call('HINCRBY', key, prefix .. 'completion_tokens', ARGV[4])
if redis.call('TTL', key) < 0 then
  redis.call('EXPIRE', key, ARGV[5])
end
return 1
