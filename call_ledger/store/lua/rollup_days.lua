-- Sum one index shard's rollups for analytics, in the server: the per-assistant fields are
-- many (they grow with the assistants), cheaper to add up here than to ship.
-- KEYS: the shard's day-total hashes of the period, oldest first, then its per-assistant
-- hashes to add up, then those to subtract (the months, weeks and days whose signed sum is
-- the period: api.aggregates.period_units); one slot: they share the shard's hash tag.
-- ARGV: the number of day-total hashes, the number of hashes to subtract (the last KEYS),
-- then (optional) the shard's key base, the prefix of an assistant's list in the scope
-- (`z:<scope>:a=`) and the period's score range (hi, lo).
-- Returns one flat (field, value) array per day-total hash, then one array of the
-- per-assistant fields summed (those that sum to 0 left out), then (with ARGV[3..6]) per assistant that has calls
-- here: its id, the score and member of its latest call in the period, and '' (the caller reads the
-- names of the latest calls over all shards only: one entry per assistant, not one per shard); or, when
-- its latest call in the period is archived (`an:<scope>`, archive_unindex.lua), that call's score, member
-- and its name as JSON. Every value is an integer below 2^53 (counts, seconds, whole units, nano
-- remainders), which a Lua number holds exactly; '%.0f' writes it without an exponent.
-- Fields `an:<aid>:<name>` (name counts written by versions before issue #23, until
-- `call-ledger reindex` rewrites their entries) are skipped.
local tonumber, byte, call = tonumber, string.byte, redis.call -- locals: this loop runs per field
local days = tonumber(ARGV[1])
local minus = #KEYS - tonumber(ARGV[2])
local out = {}
local assistants = {}
for i = 1, #KEYS do
  local fields = call('HGETALL', KEYS[i])
  if i <= days then
    out[i] = fields
  elseif i <= minus then
    for j = 1, #fields, 2 do
      local name = fields[j]
      if byte(name, 2) ~= 110 then -- 'n': an:<aid>:<name>
        assistants[name] = (assistants[name] or 0) + tonumber(fields[j + 1])
      end
    end
  else
    for j = 1, #fields, 2 do
      local name = fields[j]
      if byte(name, 2) ~= 110 then
        assistants[name] = (assistants[name] or 0) - tonumber(fields[j + 1])
      end
    end
  end
end
local summed = {}
for name, value in pairs(assistants) do
  if value ~= 0 then
    summed[#summed + 1] = name
    summed[#summed + 1] = string.format('%.0f', value)
  end
end
out[days + 1] = summed
if ARGV[3] then
  local base, lists, hi, lo = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  local archived = base .. 'an:' .. string.sub(lists, 3, -4)  -- `z:<scope>:a=` -> `an:<scope>`
  local high, low = tonumber(hi), tonumber(lo)
  local names = {}
  for name, value in pairs(assistants) do
    if value > 0 and string.sub(name, -2) == ':n' then
      local aid = string.sub(name, 3, -3)
      local latest = redis.call('ZREVRANGEBYSCORE', base .. lists .. aid, hi, lo, 'WITHSCORES', 'LIMIT', 0, 1)
      local found = latest[1] and {latest[2], latest[1], ''}
      local kept = redis.call('HGET', archived, aid)
      if kept then
        local old = cjson.decode(kept)
        local at = tonumber(old[1])
        if at >= low and at <= high and (not found or at > tonumber(found[1])
            or (at == tonumber(found[1]) and old[2] > found[2])) then
          found = {old[1], old[2], cjson.encode(old[3])}
        end
      end
      if found then
        names[#names + 1] = aid
        names[#names + 1] = found[1]
        names[#names + 1] = found[2]
        names[#names + 1] = found[3]
      end
    end
  end
  out[days + 2] = names
end
return out
