-- Add a batch of usage to one hour's rollup, atomically, once per batch id.
-- KEYS[1]: the hour's hash.
-- ARGV[1]: seconds to keep the hour; ARGV[2]: the batch id; ARGV[3]: the id of an
-- earlier batch of the same writer that can no longer come back ("" for none); then,
-- per dimension set: the field prefix (the dimensions), N, and N pairs of measure
-- name and increment.
-- A batch replayed from the spool after a write that did land is counted once:
-- the id is remembered in the hash itself (so this works on Redis Cluster too).
-- Only a batch that may still be replayed needs its id: the writer names the last
-- one it knows landed whole and was never spooled, and its id goes, so the hash
-- holds a handful of ids instead of one per flush for as long as the hour is kept.
local key = KEYS[1]
if ARGV[3] ~= '' then
  redis.call('HDEL', key, 'batch\t' .. ARGV[3])
end
if redis.call('HSETNX', key, 'batch\t' .. ARGV[2], 1) == 0 then
  return 0
end
-- An increment the store cannot hold (past its 64-bit integers: a provider's absurd token
-- count) is left out alone and its measure returned: raised, it stopped the script half
-- way, with the batch id already set, so the rest of the batch (other teams' usage) was
-- lost, and its replay was taken for a batch that had landed.
local skipped = {}
local i = 4
while i <= #ARGV do
  local prefix = ARGV[i]
  local pairs = tonumber(ARGV[i + 1])
  for j = 0, pairs - 1 do
    local at = i + 2 + 2 * j
    local added = redis.pcall('HINCRBY', key, prefix .. ARGV[at], ARGV[at + 1])
    if type(added) == 'table' and added.err then
      skipped[#skipped + 1] = ARGV[at]
    end
  end
  i = i + 2 + 2 * pairs
end
if redis.call('TTL', key) < 0 then
  redis.call('EXPIRE', key, ARGV[1])
end
if #skipped > 0 then
  return skipped
end
return 1
