-- Keep or free a run-time API key's id only while it still names the caller's key.
-- A create's claim (SET NX PX) may have expired and been taken by another create, and
-- a revoke may race a create of the same id: PERSIST and DEL check nothing, so either
-- could make permanent, or delete, an id that now names someone else's key.
-- KEYS[1]: <prefix>keyid:<id>. ARGV[1]: the sha256 hex of the caller's key;
-- ARGV[2]: 'keep' (make the id permanent) or 'free' (delete it).
-- Returns 1 when the id named the caller's key (and was kept or freed), else 0.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'keep' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('DEL', KEYS[1])
end
return 1
