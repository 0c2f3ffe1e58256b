-- A fan-out is done with these messages of one call (call_ledger.store.outbox, `done`): they leave its
-- outbox, and when the outbox is empty the call's `ob` goes too (a commit or a finalizer that writes a
-- message in between sets it again, in the same slot). KEYS: the call's hash, its outbox. ARGV: the
-- message ids. Returns 1 when the outbox is empty.
if #ARGV > 0 then
  redis.call('HDEL', KEYS[2], unpack(ARGV))
end
if redis.call('HLEN', KEYS[2]) == 0 then
  redis.call('HDEL', KEYS[1], 'ob')
  return 1
end
return 0
