-- Turn a run-time API key's record on or off only while it is still that key's record
-- in the state the caller read, as stored_key_expiry.lua does for its expiry: a revoke
-- may have deleted it (HSET would then write a hash of one field, no key's record), and
-- a rotation may have rotated it out (it reads the field again once it has marked the
-- old record, and carries it into the new one).
-- KEYS[1]: <prefix>key:{<sha256 hex>}. ARGV[1]: the key's id; ARGV[2]: '1' (enabled) or
-- '0' (disabled), as the record writes it; ARGV[3]: 'current' (the record the id names)
-- or 'previous' (the old record of a rotation, whose secret follows its key while its
-- grace lasts).
-- Returns 1 when the record was changed, else 0.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return 0
end
local rotated_out = redis.call('HEXISTS', KEYS[1], 'rotated_at') == 1
if rotated_out ~= (ARGV[3] == 'previous') then
  return 0
end
redis.call('HSET', KEYS[1], 'enabled', ARGV[2])
return 1
