-- Give back what one reserve call (quota_reserve.lua) reserved, when the gateway
-- never learnt its answer (the connection broke or timed out after sending it):
-- it may have run or not. Once: the marker is then 'x', so a replay gives back
-- nothing more and the call, should it arrive late, reserves nothing.
-- KEYS[1]: the call's marker (its answer: reserved, used, limit per counter, then
-- each counter's reset generation, then what the call added to each held amount and
-- the held amounts after it); KEYS[2..n+1]: its counters, in the order it reserved
-- them; KEYS[n+2..2n+1]: each counter's overrides hash; KEYS[2n+2..3n+1]: each
-- counter's held amount (quota_reserve.lua), given back what the call added to it,
-- never below 0 (absent from a give-back spooled by an older version, whose marker
-- names no held amount either).
-- ARGV[1]: seconds to keep the marker; ARGV[2..n+1]: each counter's generation field.
-- A counter an operator reset since the call ran is not given back: what the call
-- reserved went with the reset. Without generation fields (a give-back spooled by
-- an older version: KEYS are the marker and counters only), or with a marker
-- written by an older version (no generations in it), every counter is given back.
-- All or nothing, as quota_settle.lua: every key is read and every change checked
-- before the marker becomes 'x'. Checked as they went, a counter of another type or
-- holding no integer met half way left the marker 'x' and the counters before it
-- given back: the rest stayed reserved, and the replay gave back nothing more.
local answer = redis.call('GET', KEYS[1])
if answer == 'x' then
  return 0
end
if not answer then
  redis.call('SET', KEYS[1], 'x', 'EX', ARGV[1])
  return 0
end
local values = {}
for value in string.gmatch(answer, '[^,]+') do
  values[#values + 1] = tonumber(value)
end
local n = #KEYS - 1
if #ARGV > 1 then
  n = #ARGV - 1
end
local with_held = #ARGV > 1 and #KEYS == 1 + 3 * n
local give_back, release = {}, {}
for i = 1, n do
  local counter = KEYS[1 + i]
  local reserved = values[(i - 1) * 3 + 1]
  if reserved == nil then
    return redis.error_reply('BADMARKER ' .. KEYS[1] .. ' names fewer counters than the call')
  end
  local seen = values[n * 3 + i]
  local current = true
  if #ARGV > 1 and seen then
    -- Read as the reserve script reads it (quota_settle.lua says why).
    local generation = reset_generation(redis.call('HGET', KEYS[1 + n + i], ARGV[1 + i]))
    if generation == nil then
      return redis.error_reply('BADOVERRIDE ' .. KEYS[1 + n + i] .. UNREADABLE_GENERATION)
    end
    current = generation == seen
  end
  -- A counter whose window ended (and expired) has nothing left to give back.
  local value = redis.call('GET', counter)
  if current and reserved ~= 0 and value then
    if value ~= '0' and not string.match(value, '^%-?[1-9]%d*$') then
      return redis.error_reply('NOTCOUNTER ' .. counter .. ' holds no integer')
    end
    if math.abs(tonumber(value) - reserved) >= 9e18 then
      return redis.error_reply('NOTCOUNTER ' .. counter .. ' would pass 64 bits')
    end
    give_back[#give_back + 1] = {counter, reserved}
  end
  -- A marker written before there was a held amount names none: nothing was held.
  local holding = values[n * 4 + i]
  if with_held and current and holding and holding > 0 then
    local key = KEYS[1 + 2 * n + i]
    local held = redis.call('GET', key)
    if held then
      if held ~= '0' and not string.match(held, '^%-?[1-9]%d*$') then
        return redis.error_reply('NOTCOUNTER ' .. key .. ' holds no integer')
      end
      release[#release + 1] = {key, math.max(tonumber(held) - holding, 0)}
    end
  end
end
redis.call('SET', KEYS[1], 'x', 'EX', ARGV[1])
for _, each in ipairs(give_back) do
  if redis.call('DECRBY', each[1], string.format('%.0f', each[2])) < 0 then
    redis.call('SET', each[1], 0, 'KEEPTTL')
  end
end
for _, each in ipairs(release) do
  if each[2] > 0 then
    redis.call('SET', each[1], string.format('%.0f', each[2]), 'KEEPTTL')
  else
    redis.call('DEL', each[1])
  end
end
return 1
