-- commit.lua for several calls in one round trip (a single Redis server, not a Cluster,
-- where the calls' keys live on different slots). Each call is checked and written
-- exactly as commit.lua does, independently of the others.
-- KEYS[i] the i-th call's hash. ARGV, per call in KEYS order: the version read, the
-- version after, the state JSON, an id for a new call, the number of events n, then n
-- e:<event_id>, event_json pairs. Returns one 1 (written) or 0 (re-read and retry) per call.
local results = {}
local a = 1
for k = 1, #KEYS do
  local key = KEYS[k]
  local expected, new_version, state, id = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local n = tonumber(ARGV[a + 4])
  local first, last = a + 5, a + 4 + 2 * n
  a = last + 1
  local ok = (redis.call('HGET', key, 'v') or '0') == expected
  if ok then
    for i = first, last, 2 do
      if redis.call('HEXISTS', key, ARGV[i]) == 1 then
        ok = false
        break
      end
    end
  end
  if ok then
    for i = first, last, 2 do
      redis.call('HSET', key, ARGV[i], ARGV[i + 1])
    end
    redis.call('HSET', key, 'v', new_version, 'state', state)
    redis.call('HSETNX', key, 'id', id)
    results[k] = 1
  else
    results[k] = 0
  end
end
return results
