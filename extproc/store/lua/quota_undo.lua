-- Give back what one reserve call (quota_reserve.lua) reserved, when the gateway
-- never learnt its answer (the connection broke or timed out after sending it):
-- it may have run or not. Once: the marker is then 'x', so a replay gives back
-- nothing more and the call, should it arrive late, reserves nothing.
-- KEYS[1]: the call's marker (its answer: reserved, used, limit per counter);
-- KEYS[2..]: its counters, in the order it reserved them.
-- ARGV[1]: seconds to keep the marker.
local answer = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'x', 'EX', ARGV[1])
if not answer or answer == 'x' then
  return 0
end
local values = {}
for value in string.gmatch(answer, '[^,]+') do
  values[#values + 1] = tonumber(value)
end
for i = 2, #KEYS do
  local reserved = values[(i - 2) * 3 + 1]
  -- A counter whose window ended (and expired) has nothing left to give back.
  if reserved ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('DECRBY', KEYS[i], reserved) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
return 1
