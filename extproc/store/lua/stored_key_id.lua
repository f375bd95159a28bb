-- Keep, free, retire or move a run-time API key's id only while it still names the
-- caller's key. A create's claim (SET NX PX) may have expired and been taken by another
-- create, and a revoke may race a create or a rotation of the same id: PERSIST, DEL and
-- SET check nothing, so any of them could change an id that now names someone else's key.
-- KEYS[1]: <prefix>keyid:<id>. ARGV[1]: the sha256 hex of the caller's key;
-- ARGV[2]: 'keep' (make the id permanent), 'free' (delete it), 'retire' (a revoke:
-- replace it with ARGV[3], the revocation's marker 'revoked:<time>:<sha256 hex>', for
-- ARGV[4] milliseconds, so that no new key takes the id while the old key's usage is
-- still reported under it) or 'swap' (a rotation: name ARGV[3], the new secret's
-- sha256 hex, from now on).
-- 'free' comes from a create that failed or was taken back by a revoke: its secret was
-- never handed out, so it also frees the id a revoke retired for that very key.
-- Returns 1 when the id named the caller's key (and was changed so), else 0.
local held = redis.call('GET', KEYS[1])
if held ~= ARGV[1] then
  local retired_for_it = ARGV[2] == 'free' and held
    and string.sub(held, 1, 8) == 'revoked:'
    and string.sub(held, -(#ARGV[1] + 1)) == ':' .. ARGV[1]
  if not retired_for_it then
    return 0
  end
end
if ARGV[2] == 'keep' then
  redis.call('PERSIST', KEYS[1])
elseif ARGV[2] == 'retire' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
elseif ARGV[2] == 'swap' then
  redis.call('SET', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
