-- Replace calls' entries in one index shard, each if its version is newer than the one indexed, by
-- applying the delta its writer derived. Every key is under the shard's hash tag (ARGV[1] is the
-- shard's key base, KEYS[1] its entries hash, KEYS[2] its versions hash), so on a Redis Cluster the
-- whole update is one slot, atomic.
--
-- ARGV: base, then per call: member (zero-padded record id), version, score (list time µs), entry,
--   expected, delta (a whole batch's calls of one shard in one script call: per-command costs
--   dominated otherwise)
-- `delta` (call_ledger.core.indexes: entry_delta, creation, delta_from_stored) is
-- [memberships to leave, memberships to join, [[key, field, difference]...]]: what replacing the entry
-- indexed at version `expected` ('' for none) by this one changes. It is applied only while
-- `expected` is the version indexed; otherwise nothing is written and the call's answer is
-- {the version indexed ('' for none), the entry stored, its score}, from which the writer derives the delta
-- again and resends (call_ledger.store.indexes.IndexStore.write). So this script never reads an
-- entry's contents: an entry is what readers take (its payload; before layout 5 followed by a newline
-- and its rollups, which the index script of a release before layout 5 undoes an entry from), and
-- the exact undo of the entry indexed is the writer's, who has the entry at hand.
-- Expected '=<version>' (`call-ledger reindex`) also replaces an entry of the same version.
-- The same input twice, or an older version after a newer one, changes nothing: workers
-- finishing out of order converge on the newest version. Since the version only grows, a
-- writer's resends end (its version is indexed, or a newer one is).
-- Amounts are integers below 2^53 (counts, seconds, whole units, nano remainders), sent as text:
-- HINCRBY takes them as they are; a field that reaches 0 is deleted.
-- Returns per call 1 when applied, 0 when the version indexed is the same or newer, or
-- {version indexed, entry stored, its score} when the delta was derived from another entry.
local base = ARGV[1]

local function apply(member, version_text, score, entry, delta)
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

local function replace(member, version_text, score, entry, expected, delta)
  local rederive = string.sub(expected, 1, 1) == '='
  if rederive then
    expected = string.sub(expected, 2)
  end
  local indexed = redis.call('HGET', KEYS[2], member)
  if indexed then
    local was, now = tonumber(indexed), tonumber(version_text)
    if was > now or (was == now and not rederive) then
      return 0
    end
  end
  if (indexed or '') ~= expected then
    -- Every entry is in the list of all calls (`z:*:`, call_ledger.core.indexes list_key(ALL)), scored by
    -- its list time, which a layout-5 entry leaves out of its payload.
    return {indexed or '', redis.call('HGET', KEYS[1], member) or '', redis.call('ZSCORE', base .. 'z:*:', member) or ''}
  end
  return apply(member, version_text, score, entry, delta)
end

local results = {}
for i = 2, #ARGV, 6 do
  results[#results + 1] = replace(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5])
end
return results
