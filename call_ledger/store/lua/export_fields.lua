-- What an export needs of each call (SPEC §9), for a batch of calls in one command.
-- KEYS: the calls' hashes (a single Redis only: on a Cluster they lie in many slots).
-- Returns one flat (field, value, ...) list per key, in order:
--  * {} when the hash has no `id`, or neither `s` nor `fs` (no such call, not a record yet, or archived:
--    call_ledger.core.rules.has_record);
--  * when its stored record `j` is of its version `v` (call_ledger.core.served): `id`, `v`, `j`, the
--    organization register and the call_meta fields (`m:<name>`): all a row is written from,
--    without the state, the other registers or the commit token;
--  * else (layout 4 keeps no `j`; or committed by a version before `j`) the whole hash: the row is rendered
--    from it.
local out = {}
for i, key in ipairs(KEYS) do
  local all = redis.call('HGETALL', key)
  local id, v, j, s, org
  local meta = {}
  for k = 1, #all, 2 do
    local name = all[k]
    if name == 'j' then j = all[k + 1]
    elseif name == 'v' then v = all[k + 1]
    elseif name == 'id' then id = all[k + 1]
    elseif name == 's' or name == 'fs' then s = true
    elseif name == 'r:organization_id' then org = all[k + 1]
    elseif string.sub(name, 1, 2) == 'm:' then
      meta[#meta + 1] = name
      meta[#meta + 1] = all[k + 1]
    end
  end
  if id == nil or s == nil then
    out[i] = {}
  elseif j ~= nil and v ~= nil and #j > #v + 1 and string.sub(j, 1, #v + 1) == v .. '\n' then
    local fields = {'id', id, 'v', v, 'j', j}
    if org ~= nil then
      fields[#fields + 1] = 'r:organization_id'
      fields[#fields + 1] = org
    end
    for k = 1, #meta do
      fields[#fields + 1] = meta[k]
    end
    out[i] = fields
  else
    out[i] = all
  end
end
return out
