-- Commit a batch's new events to one or more calls; each call atomically, if nobody else
-- wrote it first. Works for one call on a Redis Cluster (its four keys share the call's
-- hash tag) and for a whole batch in one call on a single server.
--
-- KEYS, per call: its hash (id, v, s or layout 4's core fields, r:*, m:*, j or rh, fe, fr, lc, ob), its journal
-- (source:event_id -> the
-- event's journal entry, call_ledger/core/journal.py), its order index (sorted set: score occurred_us,
-- member the journal key), its outbox (message id -> message JSON: the outbound messages this commit
-- announces, SPEC §15, docs/outbound.md).
-- ARGV, per call in KEYS order: the version read and the commit token read ('' for none), the
-- version after and its token, whether the state after is terminal ('1'/'0') and the time (ms), the core
-- state JSON ('' in layout 4), an id for a new call, the number of events n, then n (member, occurred_us,
-- journal entry, other form) quadruples, the number of fields m, then m (field, value) pairs: the registers and
-- call_meta keys the events won, in layout 4 the core's fields (call_ledger.core.plain), and last the record `j`
-- (layouts 2 and 3) or, for a terminal call in layout 4, the record's digest `rh`
-- (call_ledger.core.served.record_digest). Only those are written: a commit writes what changed.
--
-- Layout 4 keeps no `s` and no `j`: its commit deletes them where a commit of layout 3 left them (a worker
-- that had not yet learned the move, call_ledger.store.layout), and `s`, where a hash has one, is what
-- every reader takes for the core (a worker of layout 3 writes it over older plain fields). `rh` stands for
-- `j` in the finality below: the digest of the `j` a call has, else its `rh`, is the record's before.
--
-- An event's member is its journal key in the form the store's layout writes (call_ledger.core.members), its
-- other form the one it may have been applied as by a worker writing the other layout ('' if it has one form
-- only): an event is applied if either is in the order index, and is written as its member.
-- An empty entry (LEDGER_JOURNAL=off) keeps no copy of the event: the order index alone
-- records it, and is what recognises an event already applied in both modes.
-- The token (`t`, unique per commit) makes the compare-and-set see another history that reached
-- the same version: a Redis that lost a worker's commit (restart from an older snapshot, a
-- promoted replica) and then took another worker's has that version with another token.
-- Returns per call 0: the version moved on, or an event is already applied (the worker's picture of
-- the call was stale: it re-reads and retries); nothing of that call is written then. Else 1, plus 2
-- when the call's outbox holds messages after the commit (the worker schedules their fan-out), plus
-- 4 when a finalize timer is due (terminal, not finalized, and this commit changed the record). 8 alone:
-- the call is archived or being archived (its hash has `a`, SPEC §16): nothing is written, the worker
-- dead-letters its events `call_archived`. A
-- call with no events (n = 0) is only checked: its refusals were judged on the state read, and the
-- version confirms that state; nothing is written (no record appears for a call whose only events
-- were refused), and it answers 1.
--
-- Finality, decided as call_ledger.core.outbound.after_change (the property tests hold it to it): a
-- commit that changes the record (its `j` after the version line, or its digest `rh` in layout 4; or the value
-- of a call_meta field it writes) of a terminal call stamps `lc`; announces `call.ended` (revision 0) if `fe` is not set
-- yet, and sets it; announces `call.revised` if the call is finalized (`fr` >= 1), with `fr` one more.
-- A call that is not terminal announces nothing and reads nothing more: `fe` and `fr` are only ever
-- set on a terminal call, and a status only rises (SPEC §5), so the common case (one event of a live
-- call) costs what it cost before. A commit that moves a call whose end is announced (`fe`) to another
-- organization (the value of `r:organization_id` it writes differs from the one read) announces to the
-- new organization's endpoints alone what they missed: `call.ended` (revision 0), and `call.finalized` at
-- the call's revision if it is finalized (one more if this commit also changes the record: then that
-- revision's `call.revised` goes to the unscoped endpoints alone). The old organization's endpoints are
-- told nothing more: the record is no longer theirs. Only then is the old value read. A message's id is
-- derived from (sid, type, revision, organization): a re-run can never make a second message for one
-- announcement, and a re-announcement to another organization is another message.
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

-- Whether any of the n events at ARGV[events], every fourth, is in the order index in either form.
local function applied(order, events, n)
  local last = events + 4 * (n - 1)
  for s = events, last, 4 * CHUNK do
    local keys = {}
    for i = s, math.min(s + 4 * (CHUNK - 1), last), 4 do
      keys[#keys + 1] = ARGV[i]
      if ARGV[i + 3] ~= '' then
        keys[#keys + 1] = ARGV[i + 3]
      end
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
  local last = events + 4 * (n - 1)
  for s = events, last, 4 * CHUNK do
    local entries, members = {}, {}
    for i = s, math.min(s + 4 * (CHUNK - 1), last), 4 do
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

-- stored(j), value_text(register) and announce(...) are announce.lua's, which runs before this file (call_ledger.store.scripts).

-- Whether two `j` fields hold the same record, whatever versions they were rendered at. One substring
-- made, not two: a record is some 600 bytes, and making a Lua string of it costs more than comparing it.
local function same_record(j, old)
  if not j or not old then
    return j == old
  end
  local a, b = string.find(j, '\n', 1, true), string.find(old, '\n', 1, true)
  if not a or not b or #j - a ~= #old - b then
    return false
  end
  return string.find(old, string.sub(j, a + 1), b + 1, true) == b + 1
end

-- The digest of the record in a `j` field (call_ledger.core.served.record_digest).
local function digest(j)
  return string.sub(sha1hex(stored(j)), 1, 16)
end

-- Whether the commit changes the record (call_meta aside): `last` the commit's last (field, value) pair
-- ('j' or 'rh'; nil when neither), `old_j` and `old_rh` what the hash has.
local function record_changed(last, value, old_j, old_rh)
  if last == 'rh' then
    return value ~= (old_j and digest(old_j) or old_rh)
  elseif last == 'j' and not old_j and old_rh then  -- a worker of layout 3 after a commit of layout 4
    return digest(value) ~= old_rh
  end
  return not same_record(last == 'j' and value or nil, old_j)
end

-- Whether the commit moves the call to another organization: it writes `r:organization_id` (among the m
-- pairs at ARGV[fields]) with a value, not null, other than the one the call has. Only asked of a call whose
-- end is announced (`fe`), and reads the old value only when the field is written: other commits pay nothing.
local function moved_to(call, fields, m)
  for i = fields, fields + 2 * m - 2, 2 do
    if ARGV[i] == 'r:organization_id' then
      local new = value_text(ARGV[i + 1])
      return new ~= 'null' and new ~= value_text(redis.call('HGET', call, 'r:organization_id'))
    end
  end
  return false
end

-- Whether a call_meta field among the m pairs at ARGV[fields] gets another value than it has (a
-- record whose `j` did not change still changes when its call_meta does: `j` leaves it out).
local function meta_changed(call, fields, m)
  local names, values = {}, {}
  for i = fields, fields + 2 * m - 2, 2 do
    if string.sub(ARGV[i], 1, 2) == 'm:' then
      names[#names + 1] = ARGV[i]
      values[#values + 1] = ARGV[i + 1]
    end
  end
  if #names == 0 then
    return false
  end
  local old = redis.call('HMGET', call, unpack(names))
  for i = 1, #names do
    if value_text(old[i]) ~= value_text(values[i]) then
      return true
    end
  end
  return false
end

local results = {}
local a = 1
for k = 1, #KEYS, 4 do
  local call, journal, order, outbox = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local expected, token, new_version, new_token = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local terminal, now_ms = ARGV[a + 4] == '1', ARGV[a + 5]
  local core, id = ARGV[a + 6], ARGV[a + 7]
  local n = DIGITS[ARGV[a + 8]] or tonumber(ARGV[a + 8])
  local events = a + 9
  local m = DIGITS[ARGV[events + 4 * n]] or tonumber(ARGV[events + 4 * n])
  local fields = events + 4 * n + 1
  a = fields + 2 * m
  local found
  if terminal and n > 0 then  -- what finality needs: the record and the finality fields
    found = redis.call('HMGET', call, 'v', 't', 'id', 'a', 's', 'j', 'fe', 'fr', 'ob', 'rh')
  else
    found = redis.call('HMGET', call, 'v', 't', 'id', 'a', 's')
  end
  local ok = (found[1] or '0') == expected and (found[2] or '') == token
  if found[4] then  -- archived, or being archived: nothing is written to it again (SPEC §16)
    ok = false
  elseif ok and n == 1 and ARGV[events + 3] == '' then
    ok = not redis.call('ZSCORE', order, ARGV[events])
  elseif ok and n > 0 then  -- several events, or one with two forms: one ZMSCORE
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
    -- As HSET of each field, then of v, s and t, then HSETNX id (the HMGET above read it), then the
    -- finality fields.
    local extra = NONE
    if not found[3] then
      extra = {'id', id}
    end
    -- What a commit announces is decided as call_ledger.core.outbound.after_change (see the header).
    local reply, messages = 1, nil
    if terminal then
      local revision = tonumber(found[8] or '0')
      local moved = found[7] == '1' and moved_to(call, fields, m)
      local last = fields + 2 * m - 2
      local changed = record_changed(m > 0 and ARGV[last] or nil, ARGV[last + 1], found[6], found[10])
        or meta_changed(call, fields, m)
      if changed then
        extra = {unpack(extra)}
        extra[#extra + 1], extra[#extra + 2] = 'lc', now_ms
        if found[7] ~= '1' then
          messages = {{'call.ended', 0}}
          extra[#extra + 1], extra[#extra + 2] = 'fe', '1'
        elseif revision >= 1 then
          revision = revision + 1
          extra[#extra + 1], extra[#extra + 2] = 'fr', revision
          -- Moved: the new organization gets it as its call.finalized below; the unscoped endpoints, which
          -- had every message before, get the revision as usual.
          messages = {{'call.revised', revision, moved and 'unscoped' or nil}}
        end
        if revision == 0 then
          reply = reply + 4  -- terminal, changed, not finalized: the quiet period starts again
        end
      end
      if moved then  -- what the new organization's endpoints missed, addressed to it alone
        local missed = {{'call.ended', 0, 'organization'}}
        if revision >= 1 then
          missed[2] = {'call.finalized', revision, 'organization'}
        end
        for _, message in ipairs(messages or NONE) do
          missed[#missed + 1] = message
        end
        messages = missed
      end
      if messages then
        if extra == NONE then
          extra = {}
        end
        extra[#extra + 1], extra[#extra + 2] = 'ob', '1'
      end
      if messages or found[9] == '1' then
        reply = reply + 2
      end
    end
    if core == '' then  -- layout 4: the core is among the fields
      local last = fields + 2 * m - 1
      for s = fields, last, 2 * CHUNK do
        redis.call('HSET', call, unpack(ARGV, s, math.min(last, s + 2 * CHUNK - 1)))
      end
      redis.call('HSET', call, 'v', new_version, 't', new_token, unpack(extra))
      if found[5] then  -- written by layout 3 last: its core and record are older than these fields
        redis.call('HDEL', call, 's', 'j')
      end
    elseif m == 1 then
      redis.call('HSET', call, ARGV[fields], ARGV[fields + 1], 'v', new_version, 's', core, 't', new_token,
                 unpack(extra))
    else
      local last = fields + 2 * m - 1
      for s = fields, last, 2 * CHUNK do
        redis.call('HSET', call, unpack(ARGV, s, math.min(last, s + 2 * CHUNK - 1)))
      end
      redis.call('HSET', call, 'v', new_version, 's', core, 't', new_token, unpack(extra))
    end
    if messages then
      announce(call, outbox, messages, now_ms, new_version, found[3] or id)
    end
    results[#results + 1] = reply
  elseif ok then
    results[#results + 1] = 1
  elseif found[4] then
    results[#results + 1] = 8
  else
    results[#results + 1] = 0
  end
end
return results
