-- An operator's reset (extproc quota reset): delete counters and bump each one's reset
-- generation in one atomic step, so that no reservation sees the new generation with
-- the old counter, or the reverse (quota_settle.lua and quota_undo.lua skip changes of
-- an older generation).
-- KEYS: per limit, its counter, its subject's overrides hash and the counter's held
-- amount (one hash tag: one slot on a cluster); ARGV: per limit, its generation field.
-- The held amount goes with the counter: what running requests reserved went with the
-- reset, and so do their settlements, which the new generation drops.
-- Every generation is read before the first write (Redis keeps what a script wrote
-- before an error): an overrides hash of another type, or a generation that is no
-- integer, met after the first counters were deleted left a counter deleted with its
-- generation unchanged, so the settlements of requests admitted before the reset
-- came off the usage counted since. A generation is read as every quota script reads it
-- (reset_generation.lua): '007' passed the check here once, then failed HINCRBY after
-- the counters before it were deleted.
for i = 1, #ARGV do
  if reset_generation(redis.call('HGET', KEYS[i * 3 - 1], ARGV[i])) == nil then
    return redis.error_reply('BADOVERRIDE ' .. KEYS[i * 3 - 1] .. UNREADABLE_GENERATION)
  end
end
for i = 1, #ARGV do
  redis.call('DEL', KEYS[i * 3 - 2], KEYS[i * 3])
  redis.call('HINCRBY', KEYS[i * 3 - 1], ARGV[i], 1)
end
return 1
