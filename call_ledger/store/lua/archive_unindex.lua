-- Take archived calls out of one index shard's lists (SPEC §16), keeping what `count`, `stats` and
-- `analytics` say: the rollups are left as they are, and each list the call leaves counts it in its
-- archived-calls hash (`ac:<scope>:<filter>`, field: the UTC day number of its list time), which `count`
-- adds to the list's ZCOUNT. The call also leaves the shard's archive candidates. Analytics names an
-- assistant by its latest call in the period: each assistant's latest archived call (list time, member,
-- assistant_name) is kept per scope in `an:<scope>` (field: the assistant id), which rollup_days.lua weighs
-- against the latest call left in the lists.
-- Its indexed version becomes 2^53 - 1 for a while (`gone`: member -> when, ms; archive_forget.lua
-- ends it after a grace period): an index update a worker read before the tombstone and sends after
-- this (the repair of a duplicate delivery) is then older than what is indexed, and refused, so it
-- cannot put the call back nor count it twice.
--
-- KEYS: the shard's entries hash, versions hash, archive candidates (`cl:arc:{n}`), gone set; all under `{n}`.
-- ARGV: the shard's key base, now (ms), then per call its member (zero-padded record id) and SID.
-- An entry is read before anything is counted, and deleted with it: a pass resumed after a crash
-- runs this again and counts nothing twice. Returns the number of entries removed.
local base, now = ARGV[1], ARGV[2]
local DAY_US = 86400000000
local GONE = '9007199254740991'
local CHUNK = 200  -- items per command: unpack() of thousands would overflow Lua's C stack
local unpack = unpack or table.unpack
-- Redis's time goes to each command called: the calls' changes are gathered per key first, so a batch
-- of calls of a few days and lists costs a few commands per list, not a dozen per call.
local leave, counts, names = {}, {}, {}  -- list -> members; `ac` key -> day -> calls; `an` key -> aid -> kept
local entries, versions, gone, candidates = {}, {}, {}, {}
local count_key, names_of = {}, {}  -- list -> its `ac` key; list -> {its `an` key, the assistant} or false
local function later(kept, at, member)
  return not kept or tonumber(kept[1]) < tonumber(at) or (tonumber(kept[1]) == tonumber(at) and kept[2] < member)
end
-- A stored entry's lists and score: before layout 5 from the part after the newline, [[list...], {rollups},
-- "<score>"] (read by pattern, sparing the decoding of the rollups, most of the text); in layout 5 (the
-- lean payload alone) derived from the payload as call_ledger.core.indexes.list_key names them: per scope
-- (every call, and the organization's), with and without the status, with and without the assistant. Also
-- where the payload ends.
local function lists_of(member, stored)
  local newline = string.find(stored, '\n', 1, true)
  local lists = {}
  if newline then
    local lists_end = string.find(stored, ']', newline + 3, true)  -- no list name holds a bracket
    local pos = newline + 2
    while true do
      local first, last, list = string.find(stored, '"([^"]+)"', pos)  -- `z:<scope>:<filter>`
      if not first or first > lists_end then
        break
      end
      pos = last + 1
      lists[#lists + 1] = list
    end
    return lists, string.match(stored, '"([^"]+)"%]$'), newline
  end
  -- Read as the payload writes them, by pattern: cjson would read the ids as doubles, inexact beyond 2^53. A
  -- key's name between unescaped quotes followed by a colon is found nowhere inside a JSON string, and a
  -- status is one of a few plain words. A null key is left out (no organization).
  local organization = string.match(stored, '"org":(%-?%d+)')
  local assistant = 'a=' .. string.match(stored, '"aid":(%-?%d+)')
  local status = 's=' .. string.match(stored, '"st":"([^"]*)"')
  local scopes = {'*'}
  if organization then
    scopes[2] = 'o' .. organization
  end
  for _, scope in ipairs(scopes) do
    local prefix = 'z:' .. scope .. ':'
    lists[#lists + 1] = prefix
    lists[#lists + 1] = prefix .. assistant
    lists[#lists + 1] = prefix .. status
    lists[#lists + 1] = prefix .. status .. '|' .. assistant
  end
  -- The list time: the entry's score in the list of all calls, unless the payload keeps it (beyond what a
  -- score holds exactly).
  local at = string.match(stored, '"us":(%-?%d+)') or redis.call('ZSCORE', base .. 'z:*:', member)
  return lists, at, #stored + 1
end

for i = 3, #ARGV, 2 do
  local member = ARGV[i]
  local stored = redis.call('HGET', KEYS[1], member)
  if stored then
    local lists, at, newline = lists_of(member, stored)
    local day = string.format('%.0f', math.floor(tonumber(at) / DAY_US))
    for _, list in ipairs(lists) do
      local members = leave[list]
      if not members then  -- the first call on this list: its keys, worked out once
        members = {}
        leave[list] = members
        count_key[list] = base .. 'ac:' .. string.sub(list, 3)
        local scope, aid = string.match(list, '^z:([^:]*):a=(%d+)$')
        names_of[list] = scope and {base .. 'an:' .. scope, aid} or false
      end
      members[#members + 1] = member
      local days = counts[count_key[list]] or {}
      counts[count_key[list]] = days
      days[day] = (days[day] or 0) + 1
      local named = names_of[list]
      if named then
        local key, aid = named[1], named[2]
        local kept = names[key] or {}
        names[key] = kept
        if kept[aid] == nil then
          local found = redis.call('HGET', key, aid)
          kept[aid] = found and cjson.decode(found) or false
        end
        if later(kept[aid], at, member) then
          kept[aid] = {at, member, stored, newline}  -- the name is decoded for the last winner only
        end
      end
    end
    entries[#entries + 1] = member
  end
  versions[#versions + 1] = member
  versions[#versions + 1] = GONE
  gone[#gone + 1] = now
  gone[#gone + 1] = member
  candidates[#candidates + 1] = ARGV[i + 1]
end
local function each_chunk(command, key, items, step)
  for s = 1, #items, CHUNK * step do
    redis.call(command, key, unpack(items, s, math.min(#items, s + CHUNK * step - 1)))
  end
end
for list, members in pairs(leave) do
  each_chunk('ZREM', base .. list, members, 1)
end
for key, days in pairs(counts) do
  for day, calls in pairs(days) do
    redis.call('HINCRBY', key, day, calls)
  end
end
for key, kept in pairs(names) do
  for aid, latest in pairs(kept) do
    if latest and latest[4] then
      local name = cjson.decode(string.sub(latest[3], 1, latest[4] - 1)).an
      if name == nil then  -- left out of a lean payload (layout 5) when null
        name = cjson.null
      end
      redis.call('HSET', key, aid, cjson.encode({latest[1], latest[2], name}))
    end
  end
end
if #entries > 0 then
  each_chunk('HDEL', KEYS[1], entries, 1)
end
each_chunk('HSET', KEYS[2], versions, 2)
each_chunk('ZADD', KEYS[4], gone, 2)
each_chunk('ZREM', KEYS[3], candidates, 1)
return #entries
