-- Replace a webhook endpoint's JSON only if it is still what the caller read (call_ledger/store/endpoints.py:
-- a rotation decided in Python, written only if no other rotation or a delete came in between).
-- KEYS[1]: the endpoints hash; ARGV: the endpoint id, the JSON read, the new JSON.
-- Returns 1 when written, 0 when the endpoint changed or is gone (the caller reads it again).
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
