-- One page of a call's journal, oldest first, bounded in count and in bytes, so no request
-- reads an unbounded hash (SPEC §8).
-- KEYS[1] the call's order index (score occurred_us, member the journal key), KEYS[2] its
-- journal. ARGV[1] the journal key after which the page starts ('' = from the start),
-- ARGV[2] the most events, ARGV[3] a byte budget: the page ends after the event that
-- reaches it (a page always holds at least one event).
-- Returns {more (0/1), key, event JSON, key, event JSON, ...}, or {-1} for an unknown cursor.
-- The cursor is found by rank (O(log n)), so many events at the same instant page correctly.
local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
  if not rank then
    return {-1}
  end
  start = rank + 1
end
local limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local members = redis.call('ZRANGE', KEYS[1], start, start + limit)
local out = {0}
local bytes = 0
for i, member in ipairs(members) do
  if i > limit then
    out[1] = 1
    break
  end
  local event = redis.call('HGET', KEYS[2], member)
  if event then
    out[#out + 1] = member
    out[#out + 1] = event
    bytes = bytes + #event
  end
  if bytes >= budget and i < #members then
    out[1] = 1
    break
  end
end
return out
