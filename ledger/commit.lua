-- Commit a batch's new events to one or more calls; each call atomically, if nobody else
-- wrote it first. Works for one call on a Redis Cluster (its three keys share the call's
-- hash tag) and for a whole batch in one call on a single server.
--
-- KEYS, per call: its hash (id, v, s, r:*, m:*), its journal (source:event_id -> the event's
-- journal entry, ledger/journal.py),
-- its order index (sorted set: score occurred_us, member the journal key).
-- ARGV, per call in KEYS order: the version read and the commit token read ('' for none), the
-- version after and its token, the core state JSON, an id for a new call, the number of events n, then n (journal key, occurred_us, journal entry)
-- triples, the number of fields m, then m (field, JSON) pairs: the registers and call_meta
-- keys the events won. Only those are written: a commit writes what changed.
--
-- An empty entry (LEDGER_JOURNAL=off) keeps no copy of the event: the order index alone
-- records it, and is what recognises an event already applied in both modes.
-- The token (`t`, unique per commit) makes the compare-and-set see another history that reached
-- the same version: a Redis that lost a worker's commit (restart from an older snapshot, a
-- promoted replica) and then took another worker's has that version with another token.
-- Returns one 1 (written) or 0 per call: the version moved on, or an event is already
-- applied (the worker's picture of the call was stale: it re-reads and retries).
-- Nothing of that call is written then. A call with no events (n = 0) is only checked: its
-- refusals were judged on the state read, and the version confirms that state; nothing is
-- written (no record appears for a call whose only events were refused).
local results = {}
local a = 1
for k = 1, #KEYS, 3 do
  local call, journal, order = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local expected, token, new_version, new_token = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local core, id = ARGV[a + 4], ARGV[a + 5]
  local n = tonumber(ARGV[a + 6])
  local events = a + 7
  local m = tonumber(ARGV[events + 3 * n])
  local fields = events + 3 * n + 1
  a = fields + 2 * m
  local found = redis.call('HMGET', call, 'v', 't')
  local ok = (found[1] or '0') == expected and (found[2] or '') == token
  if ok then
    for i = events, events + 3 * (n - 1), 3 do
      if redis.call('ZSCORE', order, ARGV[i]) then
        ok = false
        break
      end
    end
  end
  if ok and n > 0 then
    -- One command per item: unpack() of a big batch would exceed Lua's stack.
    for i = events, events + 3 * (n - 1), 3 do
      if ARGV[i + 2] ~= '' then
        redis.call('HSET', journal, ARGV[i], ARGV[i + 2])
      end
      redis.call('ZADD', order, ARGV[i + 1], ARGV[i])
    end
    for i = fields, fields + 2 * (m - 1), 2 do
      redis.call('HSET', call, ARGV[i], ARGV[i + 1])
    end
    redis.call('HSET', call, 'v', new_version, 's', core, 't', new_token)
    redis.call('HSETNX', call, 'id', id)
    results[#results + 1] = 1
  elseif ok then
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
return results
