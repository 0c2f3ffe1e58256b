-- Sum one index shard's day rollups for analytics, in the server: a 90-day period over many
-- assistants is thousands of fields per day, which is cheaper to add up here than to ship.
-- KEYS: the shard's day hashes (one slot: they share the shard's hash tag), oldest first.
-- Returns one flat (field, value) array per day with its own totals (fields not starting
-- with "a"), then one array of the per-assistant fields ("a:...", "an:...") summed over
-- all the days. Every value is an integer below 2^53 (counts, seconds, whole units, nano
-- remainders), which a Lua number holds exactly; '%.0f' writes it without an exponent.
local out = {}
local assistants = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  local day = {}
  for j = 1, #fields, 2 do
    local name = fields[j]
    if string.byte(name, 1) == 97 then -- "a"
      assistants[name] = (assistants[name] or 0) + tonumber(fields[j + 1])
    else
      day[#day + 1] = name
      day[#day + 1] = fields[j + 1]
    end
  end
  out[i] = day
end
local summed = {}
for name, value in pairs(assistants) do
  summed[#summed + 1] = name
  summed[#summed + 1] = string.format('%.0f', value)
end
out[#KEYS + 1] = summed
return out
