-- One page of a call's journal, oldest first, bounded in count and in bytes, so no request
-- reads an unbounded hash (SPEC §8).
-- KEYS[1] the call's order index (score occurred_us, member the journal key), KEYS[2] its
-- journal. ARGV[1] the journal key after which the page starts ('' = from the start),
-- ARGV[2] the most events, ARGV[3] a byte budget: the page ends after the event that
-- reaches it (a page always holds at least one event).
-- Returns {more (0/1), later (0/1), key, score, entry, key, score, entry, ...}, or {-1} for an
-- unknown cursor: the entries as stored (call_ledger.core.journal: Store.events_page restores each
-- event's JSON from its entry, key and score, and ends the page where that JSON reaches the
-- budget), later 1 when the index has an event after the last one returned.
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
local scored = redis.call('ZRANGE', KEYS[1], start, start + limit, 'WITHSCORES')
local count = #scored / 2
local out = {0, 0}
local bytes = 0
local last = 0
for i = 1, count do
  if i > limit then
    out[1] = 1
    break
  end
  local member = scored[2 * i - 1]
  local event = redis.call('HGET', KEYS[2], member)
  if event then
    out[#out + 1] = member
    out[#out + 1] = scored[2 * i]
    out[#out + 1] = event
    bytes = bytes + #event
    last = i
  end
  if bytes >= budget and i < count then
    out[1] = 1
    break
  end
end
if last < count then
  out[2] = 1
end
return out
