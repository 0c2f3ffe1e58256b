-- Apply a batch of new events to one call, atomically, if nobody else did first.
-- KEYS[1] the call's hash: id, v (version = events applied), state, e:<event_id> per event.
-- ARGV[1] the version the worker read, ARGV[2] the version after this batch,
-- ARGV[3] the new state JSON, ARGV[4] an id for a new call, then e:<event_id>, event_json pairs.
-- Returns 1 when written; 0 when the version moved on or an event is already applied (the
-- worker's picture of the call was stale: it re-reads and retries). Nothing is written then.
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then
  return 0
end
for i = 5, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    return 0
  end
end
-- One HSET per event: unpack() of a whole batch would exceed Lua's stack for big batches.
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'state', ARGV[3])
redis.call('HSETNX', KEYS[1], 'id', ARGV[4])
return 1
