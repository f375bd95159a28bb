-- Cut the old secret of a rotation to its grace only while its record is still the
-- key's: a revoke may have deleted it since the rotation read it, and HSET would then
-- write a hash of two fields, no key's record, which `keys list` named as written by a
-- person and the store kept for the whole grace.
-- KEYS[1]: <prefix>key:{<sha256 hex>} of the old secret. ARGV[1]: the key's id;
-- ARGV[2]: secret_expires_at and ARGV[3]: rotated_at (unix seconds, as the record
-- writes them); ARGV[4]: when the store forgets the record (unix milliseconds).
-- Returns 1 when the record was changed, else 0 (the key was revoked meanwhile).
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'secret_expires_at', ARGV[2], 'rotated_at', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
