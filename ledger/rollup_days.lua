-- Sum one index shard's rollups for analytics, in the server: the per-assistant fields are
-- many (they grow with the assistants), cheaper to add up here than to ship.
-- KEYS: the shard's day hashes of the period, oldest first, then its week hashes (one slot:
-- they share the shard's hash tag).
-- ARGV: the number of day hashes, then per day hash '1' when its per-assistant fields count
-- (days outside the weeks given), '0' when a week hash covers them.
-- Returns one flat (field, value) array per day hash with its own totals (fields not
-- starting with "a"), then one array of the per-assistant fields ("a:...", "an:...")
-- summed. Every value is an integer below 2^53 (counts, seconds, whole units, nano
-- remainders), which a Lua number holds exactly; '%.0f' writes it without an exponent.
local days = tonumber(ARGV[1])
local out = {}
local assistants = {}
for i, key in ipairs(KEYS) do
  local fields = redis.call('HGETALL', key)
  local counted = i > days or ARGV[i + 1] == '1'
  local day = {}
  for j = 1, #fields, 2 do
    local name = fields[j]
    if string.byte(name, 1) == 97 then -- "a"
      if counted then
        assistants[name] = (assistants[name] or 0) + tonumber(fields[j + 1])
      end
    elseif i <= days then
      day[#day + 1] = name
      day[#day + 1] = fields[j + 1]
    end
  end
  if i <= days then
    out[i] = day
  end
end
local summed = {}
for name, value in pairs(assistants) do
  summed[#summed + 1] = name
  summed[#summed + 1] = string.format('%.0f', value)
end
out[days + 1] = summed
return out
