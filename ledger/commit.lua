-- Apply a batch of new events to one call, atomically, if nobody else did first.
-- KEYS[1] the call's hash (v, state, id), KEYS[2] the call's events hash (event_id -> event JSON);
-- both carry the {call_sid} hash tag, so this runs on one Redis Cluster slot.
-- ARGV[1] the version the worker read, ARGV[2] the version after this batch,
-- ARGV[3] the new state JSON, ARGV[4] an id for a new call, then event_id, event_json pairs.
-- Returns 1 when written, 0 when the version moved on (the worker re-reads and retries).
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then
  return 0
end
-- The version check makes these impossible; refuse rather than double count if it ever is not.
for i = 5, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    return redis.error_reply('event already applied at this version: ' .. ARGV[i])
  end
end
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'state', ARGV[3])
redis.call('HSETNX', KEYS[1], 'id', ARGV[4])
return 1
