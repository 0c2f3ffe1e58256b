-- End the grace period of archived calls' index versions (archive_unindex.lua): those marked gone before
-- ARGV[1] (ms) leave the shard's versions hash, so an archived call costs its index nothing any more.
-- KEYS: the shard's versions hash, its gone set. ARGV: the cutoff (ms), at most how many.
-- Returns how many were forgotten (the caller runs it again while it forgets a full page).
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(gone) do
  if redis.call('HGET', KEYS[1], member) == '9007199254740991' then
    redis.call('HDEL', KEYS[1], member)
  end
end
if #gone > 0 then
  redis.call('ZREM', KEYS[2], unpack(gone))
end
return #gone
