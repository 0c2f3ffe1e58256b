-- Finalize a terminal call that has been quiet (SPEC §15): set `fr` = 1 and write the `call.finalized`
-- message into its outbox, in one step on the call's slot, so two finalizers can never both finalize
-- it and a finalization exists only with its message. Decided as call_ledger.core.outbound.on_quiet.
--
-- KEYS: the call's hash, its outbox. ARGV: now (ms), LEDGER_FINALIZE_AFTER_S in ms.
-- Returns {3}: not terminal (`fe` unset: drop the timer); {2, lc}: already finalized (drop it);
-- {0, due}: changed less than the quiet period ago (move the timer to `due`); {1, lc}: finalized, the
-- outbox has the message (schedule its fan-out, drop the timer). `lc`: when the record last changed (ms),
-- what the archive's candidates are scored by (SPEC §16).
-- announce(...) is announce.lua's, which runs before this file (call_ledger.store.scripts).

local call, outbox = KEYS[1], KEYS[2]
local now, after = tonumber(ARGV[1]), tonumber(ARGV[2])
local found = redis.call('HMGET', call, 'fe', 'fr', 'lc', 'v', 'id')
if found[1] ~= '1' then
  return {3}
end
if tonumber(found[2] or '0') >= 1 then
  return {2, tonumber(found[3] or '0')}
end
local due = tonumber(found[3] or '0') + after
if now < due then
  return {0, due}
end
redis.call('HSET', call, 'fr', '1', 'ob', '1')
announce(call, outbox, {{'call.finalized', 1}}, ARGV[1], found[4], found[5])
return {1, tonumber(found[3] or '0')}
