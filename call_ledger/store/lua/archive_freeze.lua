-- Hold calls for an archive pass (SPEC §16): set `a` = the pass's marker ("@<pass id>") on each call that is
-- still as the pass read it (its version and commit token), finalized (`fr` >= 1), with an empty outbox
-- (`ob` unset: every message fanned out) and not archived or held by another pass. From then on a commit
-- refuses the call (commit.lua: `call_archived`), so the row the pass writes is the call's last state.
--
-- KEYS: call hashes. ARGV: the marker, then per call its version and token as read ('' for none).
-- Returns per call 1 when it is held by this pass (now, or already: a resumed pass), else 0.
local marker = ARGV[1]
local held = {}
for i = 1, #KEYS do
  local found = redis.call('HMGET', KEYS[i], 'v', 't', 'a', 'fr', 'ob')
  if found[3] == marker then
    held[i] = 1
  elseif not found[3] and found[1] == ARGV[2 * i] and (found[2] or '') == ARGV[2 * i + 1]
      and tonumber(found[4] or '0') >= 1 and found[5] ~= '1' then
    redis.call('HSET', KEYS[i], 'a', marker)
    held[i] = 1
  else
    held[i] = 0
  end
end
return held
