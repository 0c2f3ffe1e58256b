-- Claim the calls whose outbox is due for fan-out (call_ledger.store.outbox, `claim_due`): each is
-- re-scored to the lease's end, so another fan-out loop skips it until the lease runs out (a fan-out
-- that dies mid-way is taken up again then; enqueueing a delivery is idempotent).
-- KEYS: cl:ob:{n}. ARGV: now (ms), the most to claim, the lease's end (ms). Returns the claimed sids.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for i = 1, #due do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], due[i])
end
return due
