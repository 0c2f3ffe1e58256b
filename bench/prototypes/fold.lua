-- PROTOTYPE (bench/prototypes/fold_server.py, measurement only): fold compact per-event tuples into a
-- call's state kept as plain hash fields. One script call commits any number of calls.
--
-- KEYS, per call: its hash, its journal (hash: journal key -> entry), its order index (zset: score
-- occurred_us, member journal key).
-- ARGV[1]: the index key prefix (e.g. `bench:fx:`); the time index `<p>{<shard>}:t` and the day rollups
-- `<p>{<shard>}:d:<day>` are built here (single server only: on a Cluster they are another slot).
-- Then per call: shard, nf, nf field names (the r:/m: fields its events set), ne, then ne events:
--   jkey, us, okey, st, sa, an, du, pv, entry, nc, nc x (component, nano), nr, nr x (field, stored value)
-- where okey = %017d(us) .. event_id .. '\0' .. source (compares as (us, event_id, source)),
-- st = '' or `<len>:<rank .. %017d(us) .. event_id><occurred_at>`, sa/an = '' or %017d(us) .. text
-- (compares as (us, text)), du = '' or seconds, pv = '' or the provider source, entry = journal bytes
-- ('' journal off), a register/meta stored value = `<len>:<okey><JSON value>`.
--
-- Hash fields: v (version), st, sa, an, du, fs (first seen us), pv, c:<component> (nano sums),
-- r:<register>, m:<call_meta key>. Returns {events applied, events skipped as already applied}.
local unpack = unpack or table.unpack
local find, sub = string.find, string.sub
local DAY = 86400000000
local P = ARGV[1]
local CORE = {'v', 'st', 'sa', 'an', 'du', 'fs', 'pv', 'c:llm', 'c:tts', 'c:stt', 'c:telephony'}
local NCORE = #CORE
local COMPONENTS = {'llm', 'tts', 'stt', 'telephony'}

-- The order key of a stored `<len>:<key><value>` (or of nil: nil).
local function key_of(v)
  if not v then
    return nil
  end
  local c = find(v, ':', 1, true)
  return sub(v, c + 1, c + tonumber(sub(v, 1, c - 1)))
end

local function list_time(sa, fs)
  if sa then
    return tonumber(sub(sa, 1, 17))
  end
  return fs and tonumber(fs)
end

local applied_total, skipped_total = 0, 0
local a = 2
for k = 1, #KEYS, 3 do
  local call, journal, order = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local shard = ARGV[a]
  local nf = tonumber(ARGV[a + 1])
  local ne = tonumber(ARGV[a + 2 + nf])
  -- Where each event starts, and its journal key.
  local starts, jkeys = {}, {}
  local p = a + 3 + nf
  for i = 1, ne do
    starts[i], jkeys[i] = p, ARGV[p]
    local nc = tonumber(ARGV[p + 9])
    local nr = tonumber(ARGV[p + 10 + 2 * nc])
    p = p + 11 + 2 * nc + 2 * nr
  end
  local scores = redis.call('ZMSCORE', order, unpack(jkeys))
  local wanted = {unpack(CORE)}
  for i = 1, nf do
    wanted[NCORE + i] = ARGV[a + 1 + i]
  end
  local found = redis.call('HMGET', call, unpack(wanted))
  local old = {}
  for i = 2, NCORE do
    old[CORE[i]] = found[i] or nil
  end
  local st, sa, an, du, fs, pv = old.st, old.sa, old.an, old.du, old.fs, old.pv
  local st_key = key_of(st)
  local du_n = du and tonumber(du)
  local fs_n = fs and tonumber(fs)
  local reg, reg_key, dirty = {}, {}, {}
  for i = 1, nf do
    local name = ARGV[a + 1 + i]
    reg[name] = found[NCORE + i] or nil
  end
  local pairs_added = {}
  local entries, members = {}, {}
  local applied = 0
  local changed = false
  for i = 1, ne do
    if scores[i] then
      skipped_total = skipped_total + 1
    else
      applied = applied + 1
      local e = starts[i]
      local us, okey = ARGV[e + 1], ARGV[e + 2]
      local est, esa, ean, edu, epv, entry = ARGV[e + 3], ARGV[e + 4], ARGV[e + 5], ARGV[e + 6], ARGV[e + 7],
        ARGV[e + 8]
      if est ~= '' then
        local kk = key_of(est)
        if not st_key or kk > st_key then
          st, st_key, changed = est, kk, true
        end
      end
      if esa ~= '' and (not sa or esa < sa) then
        sa, changed = esa, true
      end
      if ean ~= '' and (not an or ean < an) then
        an, changed = ean, true
      end
      if edu ~= '' then
        local d = tonumber(edu)
        if not du_n or d > du_n then
          du, du_n, changed = edu, d, true
        end
      end
      local usn = tonumber(us)
      if not fs_n or usn < fs_n then
        fs, fs_n, changed = us, usn, true
      end
      if epv ~= '' and not pv then
        pv, changed = epv, true
      end
      local nc = tonumber(ARGV[e + 9])
      for c = e + 10, e + 8 + 2 * nc, 2 do
        local comp, amount = ARGV[c], ARGV[c + 1]
        redis.call('HINCRBY', call, 'c:' .. comp, amount)
        pairs_added[#pairs_added + 1] = comp
        pairs_added[#pairs_added + 1] = amount
      end
      local r = e + 10 + 2 * nc
      local nr = tonumber(ARGV[r])
      for f = r + 1, r + 2 * nr - 1, 2 do
        local name = ARGV[f]
        local current = reg_key[name]
        if current == nil then
          current = key_of(reg[name]) or false
          reg_key[name] = current
        end
        if not current or okey > current then
          reg[name], reg_key[name], dirty[name] = ARGV[f + 1], okey, true
        end
      end
      if entry ~= '' then
        entries[#entries + 1] = jkeys[i]
        entries[#entries + 1] = entry
      end
      members[#members + 1] = us
      members[#members + 1] = jkeys[i]
    end
  end
  if applied > 0 then
    local out = {'v', tonumber(found[1] or '0') + 1}
    if changed then  -- the fields that are set (a field is never written empty)
      if st ~= old.st then out[#out + 1], out[#out + 2] = 'st', st end
      if sa ~= old.sa then out[#out + 1], out[#out + 2] = 'sa', sa end
      if an ~= old.an then out[#out + 1], out[#out + 2] = 'an', an end
      if du ~= old.du then out[#out + 1], out[#out + 2] = 'du', du end
      if fs ~= old.fs then out[#out + 1], out[#out + 2] = 'fs', fs end
      if pv ~= old.pv then out[#out + 1], out[#out + 2] = 'pv', pv end
    end
    for name in pairs(dirty) do
      out[#out + 1], out[#out + 2] = name, reg[name]
    end
    redis.call('HSET', call, unpack(out))
    if #entries > 0 then
      redis.call('HSET', journal, unpack(entries))
    end
    redis.call('ZADD', order, unpack(members))
    -- The time index and the day rollups, from the fields before and after.
    local before, after = list_time(old.sa, old.fs), list_time(sa, fs)
    local base = P .. '{' .. shard .. '}:'
    if before ~= after then
      redis.call('ZADD', base .. 't', after, call)
    end
    local old_day = before and math.floor(before / DAY)
    local new_day = math.floor(after / DAY)
    local rollup = base .. 'd:' .. new_day
    if old_day == new_day or not old_day then
      if not old_day then
        redis.call('HINCRBY', rollup, 'n', 1)
      end
      for c = 1, #pairs_added, 2 do
        redis.call('HINCRBY', rollup, pairs_added[c], pairs_added[c + 1])
      end
    else  -- the start moved to another day: move the call's whole contribution (rare)
      local was_rollup = base .. 'd:' .. old_day
      for _, comp in ipairs(COMPONENTS) do
        local was = old['c:' .. comp]
        if was and redis.call('HINCRBY', was_rollup, comp, '-' .. was) == 0 then
          redis.call('HDEL', was_rollup, comp)
        end
      end
      if redis.call('HINCRBY', was_rollup, 'n', -1) == 0 then
        redis.call('HDEL', was_rollup, 'n')
      end
      redis.call('HINCRBY', rollup, 'n', 1)
      local now = redis.call('HMGET', call, 'c:llm', 'c:tts', 'c:stt', 'c:telephony')
      for c = 1, 4 do
        if now[c] then
          redis.call('HINCRBY', rollup, COMPONENTS[c], now[c])
        end
      end
    end
    applied_total = applied_total + applied
  end
  a = p
end
return {applied_total, skipped_total}
