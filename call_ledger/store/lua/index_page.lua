-- One shard's share of a page of a list: newest first by (score, member), after a cursor.
-- KEYS: the sorted set, the shard's entries hash.
-- ARGV: max score, min score (ZRANGEBYSCORE syntax), count, cursor score ('' for none),
--       cursor member.
-- Returns flat (member, score, entry payload JSON) triples, at most `count`, of items within
-- [min, max] that come after the cursor: score < cursor score, or equal score and a smaller
-- member. Items tied with the cursor's score are few (same microsecond), so they are read
-- and skipped here: a page costs O(count + ties), whatever its depth.
local zset, entries = KEYS[1], KEYS[2]
local max, min, count, cscore, cmember = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local extra = 0
local cs = nil
if cscore ~= '' then
  cs = tonumber(cscore)
  extra = redis.call('ZCOUNT', zset, cscore, cscore)
  -- Start at the cursor, not at the top: what comes before it is not read at all.
  if max == '+inf' or tonumber(max) > cs then
    max = cscore
  end
end
local items = redis.call('ZREVRANGEBYSCORE', zset, max, min, 'WITHSCORES', 'LIMIT', 0, count + extra)
local out = {}
local taken = 0
for i = 1, #items, 2 do
  local m, s = items[i], items[i + 1]
  local sn = tonumber(s)
  if cs == nil or sn < cs or (sn == cs and m < cmember) then
    out[#out + 1] = m
    out[#out + 1] = s
    local entry = redis.call('HGET', entries, m)
    -- Only the payload: before layout 5 an entry's rollups follow it after a newline.
    local newline = entry and string.find(entry, '\n', 1, true)
    out[#out + 1] = newline and string.sub(entry, 1, newline - 1) or entry or ''
    taken = taken + 1
    if taken >= count then
      break
    end
  end
end
return out
