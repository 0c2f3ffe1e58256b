-- Create a webhook endpoint unless its organization has its limit already (call_ledger/store/endpoints.py).
-- KEYS[1]: the endpoints hash (cl:wh:endpoints); ARGV: the endpoint id, its JSON, its organization's tag (the
-- integer's digits, or "null": call_ledger.core.endpoints.organization_tag), the limit.
-- Returns 1 when created, 0 when the organization is at its limit. Atomic, so two creates at once cannot pass
-- the limit together. The organization is read from the stored JSON's text (`"organization_id":` then the
-- integer or null, as core.endpoints.encode writes it; inside a JSON string a quote is escaped, so the pattern
-- matches only the key), not decoded: cjson would read an id above 2^53 as a rounded double.
local count = 0
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
  if string.match(value, '"organization_id":(-?%w+)') == ARGV[3] then
    count = count + 1
  end
end
if count >= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
