-- Release calls an archive pass held (SPEC §16) but will not archive: a pass abandoned after an error, or a
-- hold left by a process that lost the lock. Each call's `a` goes if it is still that hold; a tombstone, or
-- another pass's hold, is left as it is.
-- KEYS: call hashes. ARGV: per call, the hold ("@<pass id>"). Returns the number released.
local released = 0
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'a') == ARGV[i] then
    redis.call('HDEL', KEYS[i], 'a')
    released = released + 1
  end
end
return released
