-- Replace one call's entry in one index shard, if this version is newer than the one indexed.
-- Every key is under the shard's hash tag (ARGV[1] is the shard's key base, KEYS[1] its entries
-- hash), so on a Redis Cluster the whole update is one slot, atomic.
--
-- ARGV: base, member (zero-padded record id), version, score (list time µs), entry
--   entry = <payload JSON> "\n" [version, [sorted-set suffix...], [[hash suffix, field, amount]...]]
--   (readers take the payload; this script only the part after the newline)
-- The previous entry (if any) is undone exactly: its memberships removed, its increments
-- subtracted (fields that reach 0 deleted), then the new one added. The same input twice,
-- or an older version after a newer one, changes nothing: workers finishing out of order
-- converge on the newest version.
-- Returns 1 when applied, 0 when the stored version is the same or newer.
local base, member, version, score, entry = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local function undo(stored)
  return cjson.decode(string.sub(stored, string.find(stored, '\n', 1, true) + 1))
end
local old = redis.call('HGET', KEYS[1], member)
if old then
  local o = undo(old)
  if tonumber(o[1]) >= version then
    return 0
  end
  for _, suffix in ipairs(o[2]) do
    redis.call('ZREM', base .. suffix, member)
  end
  for _, inc in ipairs(o[3]) do
    if tonumber(redis.call('HINCRBY', base .. inc[1], inc[2], '-' .. inc[3])) == 0 then
      redis.call('HDEL', base .. inc[1], inc[2])
    end
  end
end
local new = undo(entry)
for _, suffix in ipairs(new[2]) do
  redis.call('ZADD', base .. suffix, score, member)
end
for _, inc in ipairs(new[3]) do
  redis.call('HINCRBY', base .. inc[1], inc[2], inc[3])
end
redis.call('HSET', KEYS[1], member, entry)
return 1
