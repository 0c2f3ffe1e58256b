-- Drop an endpoint's delivered and failed messages created before the retention's start, and the attempts
-- logged before it (call_ledger/store/deliveries.py); a message still pending is kept whatever its age.
-- KEYS: msg, pending, created, log. ARGV: cutoff (ms), at most how many. Returns how many were dropped.
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local dropped = 0
for _, id in ipairs(ids) do
  if not redis.call('ZSCORE', KEYS[2], id) then
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[3], id)
    dropped = dropped + 1
  end
end
redis.call('XTRIM', KEYS[4], 'MINID', '~', ARGV[1])
return dropped
