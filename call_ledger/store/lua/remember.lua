-- The signature ledger's GET-or-SET for servers without SET NX GET (Redis < 7.0)
-- (call_ledger/store/signatures.py). KEYS[1]: the signature's key; ARGV: the params digest, the TTL in
-- seconds. Returns the digest already there, or false when this call set it.
local previous = redis.call('GET', KEYS[1])
if previous then return previous end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
