-- Check and reserve, atomically, a set of limits: on Redis Cluster those of one
-- subject (their keys share the subject's hash tag), on a single server all of a
-- request's limits at once.
-- KEYS[1]: this call's marker (same hash tag): written when the call reserves, it
-- holds the call's answer, so that the call sent again (a client's retry after a
-- lost answer) gets the same answer without reserving twice, and a call whose
-- answer was lost can be given back (quota_undo.lua); 'x' once given back. Then
-- three keys per limit: its counter, its subject's overrides hash (limits set at
-- run time), and its held amount: the part of the counter that requests still
-- running hold (their reservations, not yet settled). The counter counts it too,
-- as before there was a held amount, so that every limit is checked against
-- settled usage and reservations alike; the held amount tells the two apart.
-- ARGV[1]: seconds to keep the marker; ARGV[2]: the longest a held amount is kept
-- after the last reservation added to it; ARGV[3]: the least an enforced hard-capped
-- token limit must have left for this request (its prompt and the least answer it
-- takes; 0: no such least); ARGV[4], ARGV[5]: the prompt's part of the token estimate
-- and of the cost estimate (millionths of a dollar); the rest of each is the answer's
-- allowance. Then eight values per limit: limit, cost,
-- ttl seconds, enforce (1|0), kind (r|t|c), override field, reset generation field
-- (in the overrides hash: how many times an operator reset the counter), hard cap (1|0).
--   r (requests): admitted while used + cost <= limit; reserves cost, settled at once
--                 (nothing held).
--   t (tokens):   admitted while something remains; reserves cost, the request's
--                 estimate, whole, and holds it until the request settles. Under a
--                 hard cap, min(cost, what remains): the gateway then lowers the
--                 answer's allowance to fit, so what remains is the most the
--                 request can use, and every token limit of the call reserves no more
--                 than the least that its enforced hard-capped limits have left.
--   c (cost):     as t, in millionths of a dollar, never hard-capped (a cap lowers an
--                 answer's tokens; the request's token limits do that). A request a
--                 hard cap lowers reserves at most its prompt's cost and the capped
--                 answer's share of the rest (the cost of an answer grows with its
--                 tokens at most as fast as the whole allowance's did, so that share
--                 bounds what the lowered answer can cost).
-- A token limit without a hard cap reserved min(cost, what remains) too, and so held
-- less than the request crossing the budget would use: an earlier request's
-- settlement under its estimate then freed room that was not there, and the next
-- request was admitted into a budget already spent (three calls of 12 tokens each,
-- estimated at 15, into a budget of 20).
-- Returns {1, reserved_1, used_1, limit_1, ..., generation_1, ..., holding_1, ...,
-- held_1, ...} when admitted (used = after reserving; the generations let a
-- settlement skip a counter reset since; holding = what this call added to the held
-- amount, which its settlement takes off again; held = the held amount after it), or
-- {0, index, used, limit, held, refused, ...} naming every enforced limit that refused
-- (refused 1), in order, each with what running requests held of its usage, and beside
-- them every enforced hard-capped token limit that did not (refused 0, or 2 when it has
-- less left than ARGV[3]: the hard cap refuses the request, even when no limit does);
-- nothing is written then, the request counted in no limit. Before, a hard-capped
-- budget too short for the prompt admitted it here, counting it in the subject's
-- request limits, and the gateway refused it and gave the count back with its next
-- settlement batch: a request of the subject reaching the store before that batch
-- was refused by requests_per_* for a request nobody served.
-- Returns {-1}, writing nothing, when the call was given back before it arrived.
-- All or nothing: Redis keeps what a script wrote before an error, so every value is
-- read and checked before the first write. A counter INCRBY could not add to (not an
-- integer, or past 64 bits), an override that is no integer or a reset generation
-- that is no integer, met after the first counters were reserved, left them reserved
-- with no marker and an error for an answer: nothing gave them back until their
-- windows ended (never, for a lifetime quota). Such a call now fails before it
-- writes anything.
local earlier = redis.call('GET', KEYS[1])
if earlier == 'x' then
  return {-1}
elseif earlier then
  local again = {1}
  for value in string.gmatch(earlier, '[^,]+') do
    again[#again + 1] = tonumber(value)
  end
  return again
end
local n = (#KEYS - 1) / 3
-- The error's code names what is wrong (the spool logs it).
local function refuse(code, key, what)
  return redis.error_reply(code .. ' ' .. key .. ' holds ' .. what)
end
local function count(key)
  local value = redis.call('GET', key) or '0'
  if value ~= '0' and not string.match(value, '^%-?[1-9]%d*$') then
    return nil
  end
  return tonumber(value)
end
local used, limits, generations, held = {}, {}, {}, {}
local refused, refusals = {0}, 0
local function refusal(i, current, limit, refusing)
  refused[#refused + 1] = i
  refused[#refused + 1] = current
  refused[#refused + 1] = limit
  refused[#refused + 1] = held[i]
  refused[#refused + 1] = refusing
end
for i = 1, n do
  local base = 5 + (i - 1) * 8
  local counter, overrides, holding = KEYS[i * 3 - 1], KEYS[i * 3], KEYS[i * 3 + 1]
  local limit = tonumber(ARGV[base + 1])
  local set = redis.call('HMGET', overrides, ARGV[base + 6], ARGV[base + 7])
  if set[1] then
    limit = tonumber(set[1])
    -- Past 2^53 - 1 (the config's bound) an override is no integer these doubles count
    -- exactly: 'inf' or '1e19' admitted every request as if there were no limit, and
    -- came back as -2^63 (Redis turns such a number into that integer).
    if limit == nil or limit ~= math.floor(limit) or math.abs(limit) > 9007199254740991 then
      return refuse('BADOVERRIDE', overrides, 'an override that is no integer up to 2^53 - 1')
    end
  end
  limits[i] = limit
  -- Read as every quota script reads it (reset_generation.lua). Read with tonumber,
  -- '1.5' admitted requests with generation 1 (Redis truncates a number it returns) and
  -- every settlement, compared with 1.5, was dropped: each request stayed charged its
  -- whole estimate, and its hold stayed.
  generations[i] = reset_generation(set[2])
  if generations[i] == nil then
    return redis.error_reply('BADOVERRIDE ' .. overrides .. UNREADABLE_GENERATION)
  end
  local cost = tonumber(ARGV[base + 2])
  local kind = ARGV[base + 5]
  local current = count(counter)
  if current == nil then
    return refuse('NOTCOUNTER', counter, 'no integer')
  end
  -- Absent (a counter written before there was a held amount, or nothing running): 0.
  held[i] = count(holding)
  if held[i] == nil then
    return refuse('NOTCOUNTER', holding, 'no integer')
  end
  if math.abs(held[i] + cost) >= 9e18 then
    return refuse('NOTCOUNTER', holding, 'a count INCRBY would take past 64 bits')
  end
  -- The sums are doubles here: the bound leaves room for their rounding.
  if math.abs(current + cost) >= 9e18 then
    return refuse('NOTCOUNTER', counter, 'a count INCRBY would take past 64 bits')
  end
  used[i] = current
  if ARGV[base + 4] == '1' then
    if (kind == 'r' and current + cost > limit) or (kind ~= 'r' and current >= limit) then
      -- Every refusal, not the first: one a running request holds may pass in seconds,
      -- one spent only when its window resets, and the 429 must name the longest wait.
      refusal(i, current, limit, 1)
      refusals = refusals + 1
    elseif kind == 't' and ARGV[base + 8] == '1' then
      -- A hard-capped budget with room: if another limit refuses, the gateway still
      -- tells from it whether this prompt fits the budget at all, or this period, in
      -- this one answer. Else the client sat out the other refusal's retry-after only
      -- to be refused for its prompt's size.
      if limit - current < tonumber(ARGV[3]) then
        refusal(i, current, limit, 2)
        refusals = refusals + 1
      else
        refusal(i, current, limit, 0)
      end
    end
  end
end
if refusals > 0 then
  return refused
end
local result = {1}
local holding = {}
-- The most a hard cap leaves the request: the least that an enforced hard-capped budget
-- has left. The gateway lowers the answer's allowance to fit it, so the request can use
-- no more of any budget: every token limit reserves at most that. Reserving its whole
-- estimate on the others, a capped request (Claude Code's max_tokens of 32,000 under a
-- user's daily cap with 1,000 left) held 32,000 of its group's monthly quota while it
-- ran, and the group's other requests were refused as held by running requests.
local most, asked = nil, nil
for i = 1, n do
  local base = 5 + (i - 1) * 8
  if ARGV[base + 4] == '1' and ARGV[base + 5] == 't' and ARGV[base + 8] == '1' then
    local left = limits[i] - used[i]
    if most == nil or left < most then
      most = left
    end
    asked = tonumber(ARGV[base + 2])
  end
end
-- What a cost budget reserves of ``cost`` (the request's whole estimate) when the cap
-- leaves the answer less than its allowance. Reserving the whole estimate, a capped
-- request (max_tokens 32,000 under a day with 1,000 tokens left) held 32,000 tokens'
-- worth of its group's dollar budget while it ran, and the group's other requests were
-- refused as held by running requests.
local function capped_cost(cost)
  if most == nil or most >= asked then
    return cost
  end
  local prompt, prompt_cost = tonumber(ARGV[4]), tonumber(ARGV[5])
  local allowance = asked - prompt
  if allowance <= 0 or cost <= prompt_cost then
    return cost
  end
  local answer = math.max(most - prompt, 0)
  return math.min(cost, prompt_cost + math.ceil((cost - prompt_cost) * answer / allowance))
end
for i = 1, n do
  local base = 5 + (i - 1) * 8
  local counter = KEYS[i * 3 - 1]
  local cost = tonumber(ARGV[base + 2])
  local reserve = cost
  if ARGV[base + 5] == 't' and most ~= nil and most < cost then
    reserve = math.max(most, 0)
  elseif ARGV[base + 5] == 'c' then
    reserve = capped_cost(cost)
  end
  local after = redis.call('INCRBY', counter, reserve)
  if redis.call('TTL', counter) < 0 then
    redis.call('EXPIRE', counter, tonumber(ARGV[base + 3]))
  end
  holding[i] = 0
  if ARGV[base + 5] ~= 'r' and reserve > 0 then
    holding[i] = reserve
    held[i] = redis.call('INCRBY', KEYS[i * 3 + 1], reserve)
    -- Kept as long as its counter, and no longer than the longest a request runs after
    -- the last reservation: what a crashed gateway's requests held must not hold the
    -- budget until the window ends (their reservations stay in the counter, as ever).
    redis.call('EXPIRE', KEYS[i * 3 + 1], math.min(tonumber(ARGV[base + 3]), tonumber(ARGV[2])))
  end
  result[#result + 1] = reserve
  result[#result + 1] = after
  result[#result + 1] = limits[i]
end
for i = 1, n do
  result[#result + 1] = generations[i]
end
for i = 1, n do
  result[#result + 1] = holding[i]
end
for i = 1, n do
  result[#result + 1] = held[i]
end
-- Written digit for digit: table.concat would use Lua's default number format (14
-- significant digits), and a call sent again would read back a limit of fifteen
-- nines as 1e+15, and a large reservation rounded.
local answer = {}
for i = 2, #result do
  answer[#answer + 1] = string.format('%.0f', result[i])
end
redis.call('SET', KEYS[1], table.concat(answer, ','), 'EX', ARGV[1])
return result
