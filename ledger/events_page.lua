-- One page of a call's journal, oldest first, bounded in count and in bytes, so no request
-- reads an unbounded hash (SPEC §8).
-- KEYS[1] the call's order index, KEYS[2] its journal. ARGV[1] the member after which the
-- page starts ('' = from the start), ARGV[2] the most events, ARGV[3] a byte budget: the page
-- ends after the event that reaches it (a page always holds at least one event).
-- Returns {more (0/1), member, event JSON, member, event JSON, ...}.
local start = ARGV[1] == '' and '-' or ('(' .. ARGV[1])
local limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local members = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, limit + 1)
local out = {0}
local bytes = 0
for i, member in ipairs(members) do
  if i > limit then
    out[1] = 1
    break
  end
  local event = redis.call('HGET', KEYS[2], string.sub(member, 21))
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
