-- Claim an endpoint's due messages for one process (call_ledger/store/deliveries.py). Each claimed
-- message is re-scored to the lease's end (now + the request timeout + a margin), so no other process
-- claims it while this one sends it; the lease is also written into the delivery (recover leaves a message
-- being sent alone). KEYS: msg, due, pending. ARGV: now (ms), at most how many, the lease's end (ms).
-- Returns {the earliest due score left or '', delivery JSON...}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {''}
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[1], id)
  if raw then
    local delivery = cjson.decode(raw)
    delivery.lease = tonumber(ARGV[3])
    raw = cjson.encode(delivery)
    redis.call('HSET', KEYS[1], id, raw)
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    out[#out + 1] = raw
  else -- dropped under us: nothing to send
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
  end
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then out[1] = first[2] end
return out
