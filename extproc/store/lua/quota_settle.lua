-- Settle token reservations with what was really used (delta may be negative),
-- or release them, once per batch id.
-- KEYS[1]: the batch marker (same hash tag as the counters); KEYS[2]: the subject's
-- overrides hash, where each limit's reset generation is (KEYS[1] when no change
-- names a generation); KEYS[3..n+2]: the n counters; KEYS[n+3..2n+2]: their held
-- amounts (quota_reserve.lua); KEYS[2n+3..]: markers of earlier batches of the same
-- writer that can no longer come back, to delete (none, one, or a few when the
-- writer's flushes overlapped).
-- ARGV[1]: seconds to remember the batch; then per counter: delta, ttl, generation
-- field and the generation the change belongs to (both '' for a change that applies
-- whatever the generation: an operator's, or one spooled by an older version), and
-- what the settled requests held (taken off the held amount, never below 0; 0 for an
-- operator's change, and for one spooled by a version that held nothing).
-- A change whose generation is no longer the limit's is skipped: an operator reset
-- the counter after the reservation was made, and what was reserved went with it.
-- Only a batch that may still be replayed needs its marker: without the deletion,
-- a writer settling every few milliseconds left one marker per batch and subject
-- for the whole memory time (millions of keys a week).
-- All or nothing: Redis keeps what a script wrote before an error, so every key is
-- read and every change checked before the first write. Checked as they went, a
-- counter of another type (WRONGTYPE) or one INCRBY cannot add to (not an integer,
-- or past 64 bits) met half way left the marker set and the counters before it
-- changed: the rest was lost, and the replay, finding the marker, dropped it as
-- landed. Now such a batch writes nothing and is refused whole (the spool sets it
-- aside). The other errors a script can meet (OOM, READONLY, MISCONF) refuse its
-- first write only, never a later one.
local n = (#ARGV - 1) / 5
local function forget_landed()
  for i = 2 * n + 3, #KEYS do
    redis.call('DEL', KEYS[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  forget_landed()
  return 0
end
-- Counters INCRBY can add to only while they stay within 64-bit integers; the sums
-- are doubles here, so the bound leaves room for their rounding.
local bound = 9e18
local apply, sums, helds = {}, {}, {}
local function count(key)
  local value = redis.call('GET', key) or '0'
  if value ~= '0' and not string.match(value, '^%-?[1-9]%d*$') then
    return nil
  end
  return tonumber(value)
end
for i = 1, n do
  local counter = KEYS[i + 2]
  local base = (i - 1) * 5 + 2
  local delta = tonumber(ARGV[base])
  local release = tonumber(ARGV[base + 4])
  -- A settlement at exactly the estimate changes no counter but ends a hold.
  local current = delta ~= 0 or release ~= 0
  if current and ARGV[base + 2] ~= '' then
    -- Read as the reserve script reads it: a generation it refuses (a person's HSET of
    -- '01' or '1.5' while the request ran) refuses the batch too, to be applied once it
    -- is mended, rather than settle on a subject whose requests meet a store failure,
    -- or drop the settlement as of another generation without a word.
    local generation = reset_generation(redis.call('HGET', KEYS[2], ARGV[base + 2]))
    if generation == nil then
      return redis.error_reply('BADOVERRIDE ' .. KEYS[2] .. UNREADABLE_GENERATION)
    end
    current = generation == tonumber(ARGV[base + 3])
  end
  if current and delta ~= 0 then
    local sum = sums[counter]
    if sum == nil then
      sum = count(counter)
      if sum == nil then
        return redis.error_reply('NOTCOUNTER ' .. counter .. ' holds no integer')
      end
    end
    sum = sum + delta
    if math.abs(sum) >= bound then
      return redis.error_reply('NOTCOUNTER ' .. counter .. ' would pass 64 bits')
    end
    sums[counter] = math.max(sum, 0)
  end
  if current and release ~= 0 then
    local holding = KEYS[n + i + 2]
    local held = helds[holding]
    if held == nil then
      held = count(holding)
      if held == nil then
        return redis.error_reply('NOTCOUNTER ' .. holding .. ' holds no integer')
      end
    end
    if math.abs(held - release) >= bound then
      return redis.error_reply('NOTCOUNTER ' .. holding .. ' would pass 64 bits')
    end
    -- Never below 0: a reservation made before the held amount existed (an older
    -- gateway's), or one whose hold expired, held nothing there.
    helds[holding] = math.max(held - release, 0)
  end
  apply[i] = current
end
forget_landed()
redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
for i = 1, n do
  local base = (i - 1) * 5 + 2
  if apply[i] and ARGV[base] ~= '0' then
    local counter = KEYS[i + 2]
    -- The delta as sent: its digits, exact whatever its size.
    if redis.call('INCRBY', counter, ARGV[base]) < 0 then
      redis.call('SET', counter, 0, 'KEEPTTL')
    end
    if redis.call('TTL', counter) < 0 then
      redis.call('EXPIRE', counter, ARGV[base + 1])
    end
  end
end
-- Each held amount once, as summed above, in the order of the keys; nothing left,
-- nothing kept.
for i = 1, n do
  local holding = KEYS[n + i + 2]
  local held = helds[holding]
  if held ~= nil then
    helds[holding] = nil
    if held > 0 then
      redis.call('SET', holding, string.format('%.0f', held), 'KEEPTTL')
    else
      redis.call('DEL', holding)
    end
  end
end
return 1
