-- Replace calls held by an archive pass with their tombstones (SPEC §16), once the pass's files are complete:
-- the call's hash becomes `{a: "<file no>.<row>"}` (where its row is), its journal, order index and outbox
-- go. Only a call held by this pass (`a` = the marker) is touched; one already tombstoned by it is left as it
-- is, so a pass resumed after a crash halfway through runs this again safely.
--
-- KEYS, per call: its hash, journal, order index, outbox (one slot: the `{<sid>}` tag).
-- ARGV: the marker, then per call its tombstone. Returns the number of calls tombstoned now.
local marker = ARGV[1]
local done = 0
for k = 1, #KEYS, 4 do
  local call = KEYS[k]
  if redis.call('HGET', call, 'a') == marker then
    redis.call('DEL', call, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3])
    redis.call('HSET', call, 'a', ARGV[(k - 1) / 4 + 2])
    done = done + 1
  end
end
return done
