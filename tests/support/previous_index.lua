-- Replace calls' entries in one index shard, each if its version is newer than the one indexed.
-- Every key is under the shard's hash tag (ARGV[1] is the shard's key base, KEYS[1] its entries
-- hash, KEYS[2] its versions hash), so on a Redis Cluster the whole update is one slot, atomic.
--
-- ARGV: base, then per call: member (zero-padded record id), version, score (list time µs), entry,
--   base, delta (a whole batch's calls of one shard in one script call: per-command costs
--   dominated otherwise)
-- Fast path: when `base` is the version indexed now, `delta` (call_ledger.core.indexes.entry_delta:
-- [memberships to leave, to join, [[key, field, difference]...]]) is applied as it is, and no
-- stored entry is read or decoded (that was most of this script's time). A worker sends a
-- base only for the version whose entry it wrote itself and the shard took; since a version
-- is indexed once (an equal one is refused below), the entry indexed at `base` is that one.
-- Any other case (base '' or another version indexed) takes the full path.
-- Base '=' (`call-ledger reindex`) also replaces an entry of the same version when it differs
-- (one written by an older version of call-ledger, e.g. with the name counts issue #23
-- removed): the full path, so the stored entry is undone exactly; 0 when it was the same.
--   entry = <payload JSON> "\n" [[sorted-set suffix...], {hash suffix: {field: amount}}, score]
--   (readers take the payload; this script only the part after the newline)
-- A new version whose entry is the same as the indexed one (a call_meta or flow change)
-- only records the version.
-- The previous entry (if any) is replaced exactly: memberships it no longer has are removed,
-- new ones added (all re-scored if the list time moved), and each rollup field changes by the
-- difference between the new and the old amount (a field that reaches 0 is deleted). So a
-- commit that changes one cost writes a few counters, not the whole entry's contributions.
-- The same input twice, or an older version after a newer one, changes nothing: workers
-- finishing out of order converge on the newest version.
-- Amounts are integers below 2^53 (counts, seconds, whole units, nano remainders): a Lua
-- number holds them and their differences exactly; '%.0f' writes them without an exponent.
-- Returns per call 1 when applied, 0 when the stored version is the same or newer.
local base = ARGV[1]
local function undo(stored)
  return cjson.decode(string.sub(stored, string.find(stored, '\n', 1, true) + 1))
end

local function fast(member, version_text, score, entry, delta)
  local d = cjson.decode(delta)
  local left, joined, ops = d[1], d[2], d[3]
  for i = 1, #left do
    redis.call('ZREM', base .. left[i], member)
  end
  for i = 1, #joined do
    redis.call('ZADD', base .. joined[i], score, member)
  end
  for i = 1, #ops do
    local op = ops[i]
    if redis.call('HINCRBY', base .. op[1], op[2], op[3]) == 0 then
      redis.call('HDEL', base .. op[1], op[2])
    end
  end
  redis.call('HSET', KEYS[2], member, version_text)
  redis.call('HSET', KEYS[1], member, entry)
  return 1
end

-- Adds sign * each amount of `increments` ({key: {field: amount}}) into delta[key][field]. An
-- amount only added is kept as its text (what '%.0f' would print of it), sparing tonumber.
local function add(delta, increments, sign)
  for key, fields in pairs(increments) do
    local d = delta[key]
    if d == nil then
      d = {}
      delta[key] = d
    end
    for field, amount in pairs(fields) do
      local was = d[field]
      if was == nil and sign == 1 then
        d[field] = amount
      else
        d[field] = (was or 0) + sign * tonumber(amount)
      end
    end
  end
end

local function replace(member, version_text, score, entry, from, delta)
  local indexed = redis.call('HGET', KEYS[2], member)
  local rederive = from == '='
  if indexed then
    local was, now = tonumber(indexed), tonumber(version_text)
    if was > now or (was == now and not rederive) then
      return 0
    end
  end
  if from ~= '' and indexed == from then
    return fast(member, version_text, score, entry, delta)
  end
  redis.call('HSET', KEYS[2], member, version_text)
  local old = redis.call('HGET', KEYS[1], member)
  if old == entry then
    if rederive and indexed == version_text then
      return 0
    end
    return 1
  end
  local n = undo(entry)
  local new_sets = n[1]
  local changes = {}
  if old then
    local o = undo(old)
    local wanted = {}
    for i = 1, #new_sets do
      wanted[new_sets[i]] = true
    end
    local moved = o[3] ~= score -- then every set is scored again: held is not needed
    local held = {}
    local old_sets = o[1]
    for i = 1, #old_sets do
      local suffix = old_sets[i]
      if not moved then
        held[suffix] = true
      end
      if not wanted[suffix] then
        redis.call('ZREM', base .. suffix, member)
      end
    end
    for i = 1, #new_sets do
      if moved or not held[new_sets[i]] then
        redis.call('ZADD', base .. new_sets[i], score, member)
      end
    end
    add(changes, o[2], -1)
  else
    for i = 1, #new_sets do
      redis.call('ZADD', base .. new_sets[i], score, member)
    end
  end
  add(changes, n[2], 1)
  for key, fields in pairs(changes) do
    for field, d in pairs(fields) do
      if d ~= 0 and d ~= '0' then
        if type(d) == 'number' then
          d = string.format('%.0f', d)
        end
        if redis.call('HINCRBY', base .. key, field, d) == 0 then
          redis.call('HDEL', base .. key, field)
        end
      end
    end
  end
  redis.call('HSET', KEYS[1], member, entry)
  return 1
end

local results = {}
for i = 2, #ARGV, 6 do
  results[#results + 1] = replace(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
end
return results
