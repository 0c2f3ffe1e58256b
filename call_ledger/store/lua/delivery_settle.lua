-- Record one attempt's outcome (call_ledger/store/deliveries.py), only if the message is still under the
-- lease this process claimed it with: a process that outlived its lease (another has claimed the message
-- since) records nothing, and the other's outcome stands. KEYS: msg, due, pending, log. ARGV: message id,
-- the lease (ms), the attempt's number, the state after it ('pending' | 'delivered' | 'failed'), the next
-- attempt (ms, '' unless pending), now (ms), status code or '', error or '', the log's MAXLEN.
-- Returns 1 when recorded, 0 when the lease was lost.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 0
end
local delivery = cjson.decode(raw)
delivery.attempt = tonumber(ARGV[3])
delivery.state = ARGV[4]
delivery.lease = 0
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(delivery))
if ARGV[4] == 'pending' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'm', ARGV[1], 't', delivery.type, 's', delivery.sid,
  'a', ARGV[3], 'c', ARGV[7], 'e', ARGV[8], 'at', ARGV[6], 'n', ARGV[5])
return 1
