-- Sum one index shard's rollups for analytics, in the server: the per-assistant fields are
-- many (they grow with the assistants), cheaper to add up here than to ship.
-- KEYS: the shard's day-total hashes of the period, oldest first, then its per-assistant
-- hashes to add up (the period's whole weeks, and the days outside them); one slot: they
-- share the shard's hash tag.
-- ARGV: the number of day-total hashes.
-- Returns one flat (field, value) array per day-total hash, then one array of the
-- per-assistant fields summed. Every value is an integer below 2^53 (counts, seconds, whole
-- units, nano remainders), which a Lua number holds exactly; '%.0f' writes it without an
-- exponent.
local days = tonumber(ARGV[1])
local out = {}
local assistants = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  if i <= days then
    out[i] = fields
  else
    for j = 1, #fields, 2 do
      local name = fields[j]
      assistants[name] = (assistants[name] or 0) + tonumber(fields[j + 1])
    end
  end
end
local summed = {}
for name, value in pairs(assistants) do
  summed[#summed + 1] = name
  summed[#summed + 1] = string.format('%.0f', value)
end
out[days + 1] = summed
return out
