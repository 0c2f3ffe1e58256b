-- The signature ledger's check and the XADD in one step (one server: two keys of two slots on a
-- Cluster; call_ledger/store/append_batcher.py). Known with another digest: 0, nothing written. GET
-- then SET rather than SET NX GET, which Redis before 7.0 refuses; a script is atomic either way.
-- KEYS: the signature's key, the stream. ARGV: the params digest, the TTL in seconds, the event JSON.
local previous = redis.call('GET', KEYS[1])
if previous and previous ~= ARGV[1] then return 0 end
if not previous then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return redis.call('XADD', KEYS[2], '*', 'e', ARGV[3])
