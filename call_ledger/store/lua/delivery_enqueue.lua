-- Enqueue one message for one endpoint (call_ledger/store/deliveries.py), at most once: fan-out may run
-- again over a message it already enqueued (a crash before the outbox was emptied), and must not send it
-- twice or reset its attempts. KEYS: the endpoint's msg, due, pending, created. ARGV: message id, the
-- delivery JSON, now (ms), created (ms). Returns 1 when it was new, 0 when it was already there.
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return 1
