-- Give a run-time API key's record a new expiry only while it is still that key's
-- record in the state the caller read: a revoke may have deleted it (HSET would then
-- write a hash of one field, no key's record), and a rotation may have rotated it out.
-- KEYS[1]: <prefix>key:{<sha256 hex>}. ARGV[1]: the key's id; ARGV[2]: the new
-- expires_at (unix seconds, as the record writes it); ARGV[3]: 'current' (the record
-- the id names: refused once a rotation has rotated it out, so that a rotation that
-- read the key before reads the new expiry again after marking it, and carries it on)
-- or 'previous' (the old record of a rotation still in its grace, which keeps its own
-- grace: min(secret_expires_at, expires_at) is when its secret stops); ARGV[4]: now
-- (unix seconds, the gateway's clock, which its lookups compare with).
-- An old secret that has stopped by now (the key expired, or a renewal brought its end
-- forward and it passed) is left as it is: a later expiry must not bring back a secret
-- the operator replaced, or one that stopped with its key.
-- Returns 1 when the record was changed, else 0.
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return 0
end
local rotated_out = redis.call('HEXISTS', KEYS[1], 'rotated_at') == 1
if rotated_out ~= (ARGV[3] == 'previous') then
  return 0
end
if rotated_out then
  local stops = tonumber(redis.call('HGET', KEYS[1], 'secret_expires_at') or '') or 0
  local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '') or 0
  if expires > 0 and (stops <= 0 or expires < stops) then
    stops = expires
  end
  if stops > 0 and stops <= tonumber(ARGV[4]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[2])
return 1
