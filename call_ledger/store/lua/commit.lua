-- Commit a batch's new events to one or more calls; each call atomically, if nobody else
-- wrote it first. Works for one call on a Redis Cluster (its three keys share the call's
-- hash tag) and for a whole batch in one call on a single server.
--
-- KEYS, per call: its hash (id, v, s, r:*, m:*), its journal (source:event_id -> the event's
-- journal entry, call_ledger/core/journal.py),
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
--
-- Redis's time here goes mostly to each command called and each Lua table built, not to each
-- argument: one event (the usual case) is checked with one ZSCORE and written with one HSET
-- and one ZADD, building no table; several are checked with one ZMSCORE (Redis >= 6.2, which
-- the worker's reads already use) and written with one HSET and one ZADD. The call's hash
-- takes the fields, then v, s and t, then the id if the HMGET found none (what HSETNX did), in
-- that order: one HSET for at most one field (usually just the record `j`), else two (more past
-- CHUNK fields). A command takes at most CHUNK items: unpack() of thousands would overflow
-- Lua's C stack.
local CHUNK = 200
local unpack = unpack or table.unpack
local NONE = {}
-- n and m are nearly always one digit: a table lookup costs a fraction of tonumber (strtod).
local DIGITS = {['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4, ['5'] = 5, ['6'] = 6, ['7'] = 7,
                ['8'] = 8, ['9'] = 9}

-- Whether any of the n journal keys at ARGV[events], every third, is in the order index.
local function applied(order, events, n)
  local last = events + 3 * (n - 1)
  for s = events, last, 3 * CHUNK do
    local keys = {}
    for i = s, math.min(s + 3 * (CHUNK - 1), last), 3 do
      keys[#keys + 1] = ARGV[i]
    end
    local scores = redis.call('ZMSCORE', order, unpack(keys))
    for j = 1, #scores do
      if scores[j] then
        return true
      end
    end
  end
  return false
end

-- The n events at ARGV[events]: their journal entries (the non-empty ones) and order members.
local function record(journal, order, events, n)
  local last = events + 3 * (n - 1)
  for s = events, last, 3 * CHUNK do
    local entries, members = {}, {}
    for i = s, math.min(s + 3 * (CHUNK - 1), last), 3 do
      if ARGV[i + 2] ~= '' then
        entries[#entries + 1] = ARGV[i]
        entries[#entries + 1] = ARGV[i + 2]
      end
      members[#members + 1] = ARGV[i + 1]
      members[#members + 1] = ARGV[i]
    end
    if #entries > 0 then
      redis.call('HSET', journal, unpack(entries))
    end
    redis.call('ZADD', order, unpack(members))
  end
end

local results = {}
local a = 1
for k = 1, #KEYS, 3 do
  local call, journal, order = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local expected, token, new_version, new_token = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local core, id = ARGV[a + 4], ARGV[a + 5]
  local n = DIGITS[ARGV[a + 6]] or tonumber(ARGV[a + 6])
  local events = a + 7
  local m = DIGITS[ARGV[events + 3 * n]] or tonumber(ARGV[events + 3 * n])
  local fields = events + 3 * n + 1
  a = fields + 2 * m
  local found = redis.call('HMGET', call, 'v', 't', 'id')
  local ok = (found[1] or '0') == expected and (found[2] or '') == token
  if ok and n == 1 then
    ok = not redis.call('ZSCORE', order, ARGV[events])
  elseif ok and n > 1 then
    ok = not applied(order, events, n)
  end
  if ok and n > 0 then
    if n > 1 then
      record(journal, order, events, n)
    else
      if ARGV[events + 2] ~= '' then
        redis.call('HSET', journal, ARGV[events], ARGV[events + 2])
      end
      redis.call('ZADD', order, ARGV[events + 1], ARGV[events])
    end
    -- As HSET of each field, then of v, s and t, then HSETNX id (the HMGET above read it).
    local id_field = NONE
    if not found[3] then
      id_field = {'id', id}
    end
    if m == 1 then
      redis.call('HSET', call, ARGV[fields], ARGV[fields + 1], 'v', new_version, 's', core, 't', new_token,
                 unpack(id_field))
    else
      local last = fields + 2 * m - 1
      for s = fields, last, 2 * CHUNK do
        redis.call('HSET', call, unpack(ARGV, s, math.min(last, s + 2 * CHUNK - 1)))
      end
      redis.call('HSET', call, 'v', new_version, 's', core, 't', new_token, unpack(id_field))
    end
    results[#results + 1] = 1
  elseif ok then
    results[#results + 1] = 1
  else
    results[#results + 1] = 0
  end
end
return results
