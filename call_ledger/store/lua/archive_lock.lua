-- The archive's lock (SPEC §16: one pass at a time, across processes and Cluster nodes: one key).
-- KEYS: the lock. ARGV: the holder's token, the lease (ms), and 'take', 'renew' or 'release'.
-- take: set it if free (or already ours: a re-take extends it); renew: extend it if ours; release:
-- delete it if ours. Returns 1 when the holder has the lock after the call (release: it was ours), else 0.
local lock, token, lease, what = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local holder = redis.call('GET', lock)
if what == 'take' and not holder then
  redis.call('SET', lock, token, 'PX', lease)
  return 1
end
if holder ~= token then
  return 0
end
if what == 'release' then
  redis.call('DEL', lock)
else
  redis.call('PEXPIRE', lock, lease)
end
return 1
