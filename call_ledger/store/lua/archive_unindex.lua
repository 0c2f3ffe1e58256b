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
local removed = 0
for i = 3, #ARGV, 2 do
  local member = ARGV[i]
  local stored = redis.call('HGET', KEYS[1], member)
  if stored then
    local newline = string.find(stored, '\n', 1, true)
    local entry = cjson.decode(string.sub(stored, newline + 1))
    local at = entry[3]
    local day = string.format('%.0f', math.floor(tonumber(at) / DAY_US))
    for _, list in ipairs(entry[1]) do  -- `z:<scope>:<filter>`
      redis.call('ZREM', base .. list, member)
      redis.call('HINCRBY', base .. 'ac:' .. string.sub(list, 3), day, 1)
      local scope, aid = string.match(list, '^z:([^:]*):a=(%d+)$')
      if scope then
        local names = base .. 'an:' .. scope
        local kept = redis.call('HGET', names, aid)
        local old = kept and cjson.decode(kept)
        if not old or tonumber(old[1]) < tonumber(at) or (tonumber(old[1]) == tonumber(at) and old[2] < member) then
          local name = cjson.decode(string.sub(stored, 1, newline - 1)).an
          redis.call('HSET', names, aid, cjson.encode({at, member, name}))
        end
      end
    end
    redis.call('HDEL', KEYS[1], member)
    removed = removed + 1
  end
  redis.call('HSET', KEYS[2], member, GONE)
  redis.call('ZADD', KEYS[4], now, member)
  redis.call('ZREM', KEYS[3], ARGV[i + 1])
end
return removed
