-- Take a call off the fan-out schedule after its outbox was emptied (call_ledger.store.outbox, `done`),
-- only if its score is still the claim's lease: a commit that wrote a message since re-scored it to
-- its time, and that message must still be fanned out. KEYS: cl:ob:{n}. ARGV: the sid, the lease's end.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
