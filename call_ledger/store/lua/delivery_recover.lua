-- Send an endpoint's messages created since a time again (call_ledger/store/deliveries.py): each kept
-- message back to pending, due now, its attempt count kept (a failed one gets one more try, then the rest
-- of the schedule from where it stopped). A message being sent right now (its lease not over) is left to
-- that attempt: re-scoring it would let a second process send it at the same time. KEYS: msg, due,
-- pending, created. ARGV: since (ms), now (ms), offset, limit: one page of the messages created since then
-- (the caller pages, so that no one script holds Redis for long, however many messages an endpoint keeps).
-- Returns {how many of the page are pending for it now, how many ids the page had}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[1], '+inf', 'LIMIT', ARGV[3], ARGV[4])
local now = tonumber(ARGV[2])
local count = 0
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[1], id)
  if raw then
    local delivery = cjson.decode(raw)
    local sending = delivery.state == 'pending' and (tonumber(delivery.lease) or 0) > now
    if not sending then
      if delivery.state ~= 'pending' then
        delivery.state = 'pending'
        redis.call('HSET', KEYS[1], id, cjson.encode(delivery))
      end
      redis.call('ZADD', KEYS[2], ARGV[2], id)
      redis.call('ZADD', KEYS[3], redis.call('ZSCORE', KEYS[4], id), id)
    end
    count = count + 1
  end
end
return {count, #ids}
