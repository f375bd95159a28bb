-- Claim a record ahead of a reservation sent in the same round trip: the record's
-- value when it has one, else ARGV[1], now recorded (SET NX GET). When another value
-- holds it, the reserve calls that follow it in the round trip are given back before
-- they run, by their markers: they then reserve nothing (quota_reserve.lua returns
-- {-1}), so a request refused by the record counts in no limit, not even for the
-- moment a give-back would take to land.
-- KEYS[1]: the record. Then the markers of the reserve calls it guards (on a single
-- server; on a cluster they live in other slots, and the caller gives back instead).
-- ARGV[1]: the value to record; ARGV[2]: its lifetime in seconds; ARGV[3]: how long a
-- marker given back is remembered (as quota_undo.lua writes it).
-- Returns the record's value.
local found = redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX', 'GET')
if not found then
  return ARGV[1]
end
if found ~= ARGV[1] then
  for i = 2, #KEYS do
    redis.call('SET', KEYS[i], 'x', 'EX', ARGV[3])
  end
end
return found
