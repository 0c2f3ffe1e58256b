-- Shared by commit.lua and finalize.lua (call_ledger.store.scripts puts it before each): how an
-- announcement goes into a call's outbox (SPEC §15, docs/outbound.md).

-- The record's JSON in a `j` field: what follows its version line (nil for none).
local function stored(j)
  if not j then
    return nil
  end
  local newline = string.find(j, '\n', 1, true)
  return newline and string.sub(j, newline + 1) or j
end

-- SHA-1 as hex. The embedded store (fakeredis, LEDGER_REDIS_URL unset) has no redis.sha1hex: there it
-- is computed in arithmetic, four bits at a time (Lua 5.1 has no bit operators), for announcements only.
local sha1hex = redis.sha1hex
if not sha1hex then
  sha1hex = function(text)
    local M, XOR, AND = 4294967296, {}, {}
    for x = 0, 15 do
      for y = 0, 15 do
        local e, n, p, i, j = 0, 0, 1, x, y
        for _ = 1, 4 do
          local u, v = i % 2, j % 2
          if u ~= v then e = e + p end
          if u + v == 2 then n = n + p end
          i, j, p = (i - u) / 2, (j - v) / 2, p * 2
        end
        XOR[x * 16 + y], AND[x * 16 + y] = e, n
      end
    end
    local function op(t, a, b)
      local r, p = 0, 1
      for _ = 1, 8 do
        local u, v = a % 16, b % 16
        r, a, b, p = r + t[u * 16 + v] * p, (a - u) / 16, (b - v) / 16, p * 16
      end
      return r
    end
    local function rol(a, n)
      local low = a % 2 ^ (32 - n)
      return low * 2 ^ n + (a - low) / 2 ^ (32 - n)
    end
    local bits, tail = #text * 8, ''
    for i = 7, 0, -1 do
      tail = tail .. string.char(math.floor(bits / 256 ^ i) % 256)
    end
    text = text .. '\128' .. string.rep('\0', (55 - #text) % 64) .. tail
    local h = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}
    for block = 1, #text, 64 do
      local w = {}
      for i = 0, 15 do
        local b1, b2, b3, b4 = string.byte(text, block + 4 * i, block + 4 * i + 3)
        w[i] = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
      end
      for i = 16, 79 do
        w[i] = rol(op(XOR, op(XOR, w[i - 3], w[i - 8]), op(XOR, w[i - 14], w[i - 16])), 1)
      end
      local a, b, c, d, e = h[1], h[2], h[3], h[4], h[5]
      for i = 0, 79 do
        local f, k
        if i < 20 then
          f, k = op(AND, b, c) + op(AND, M - 1 - b, d), 0x5A827999
        elseif i < 40 then
          f, k = op(XOR, op(XOR, b, c), d), 0x6ED9EBA1
        elseif i < 60 then
          f, k = op(XOR, op(XOR, op(AND, b, c), op(AND, b, d)), op(AND, c, d)), 0x8F1BBCDC
        else
          f, k = op(XOR, op(XOR, b, c), d), 0xCA62C1D6
        end
        a, b, c, d, e = (rol(a, 5) + f + e + k + w[i]) % M, a, rol(b, 30), c, d
      end
      h[1], h[2], h[3], h[4], h[5] = (h[1] + a) % M, (h[2] + b) % M, (h[3] + c) % M, (h[4] + d) % M, (h[5] + e) % M
    end
    return string.format('%08x%08x%08x%08x%08x', h[1], h[2], h[3], h[4], h[5])
  end
end

-- The text of a register's value: element 4 of [occurred_us, "event_id", "source", value] as the
-- worker wrote it (orjson), found by skipping the two strings and their escapes; no JSON decoded.
local function value_text(register)
  if not register then
    return nil
  end
  local i = string.find(register, ',', 1, true) + 2
  local c
  for _ = 1, 2 do
    c = string.find(register, '["\\]', i)
    while string.byte(register, c) == 92 do  -- a backslash: skip what it escapes
      c = string.find(register, '["\\]', c + 2)
    end
    i = c + 3
  end
  return string.sub(register, c + 2, -2)
end

-- The fields of a call hash no record is rendered from: the commit's and the outbound messages' bookkeeping.
local BOOKKEEPING = {t = true, fe = true, fr = true, lc = true, ob = true, a = true, rh = true}

-- Write announcements into the call's outbox, each {type, revision, audience} (audience nil: every endpoint
-- that wants the type and the call's organization; 'organization': only the endpoints of the call's
-- organization; 'unscoped': only the endpoints of no organization). Each carries the record as committed
-- (its `j`, call_meta fields and organization register, read back once after the write; in layout 4, which
-- keeps no `j`, the fields it is rendered from: `f`, every field but the outbound and commit bookkeeping
-- (call_ledger.store.outbox.message_of renders it)), under an id derived
-- from (sid, type, revision, the organization's raw value, empty for none): a re-run can never make a second
-- message for one announcement, and a call that moved to another organization gets new ids.
local function announce(call, outbox, messages, at, version, rid)
  local sid = string.match(call, '^[^{]*{(.*)}$')
  local hash = redis.call('HGETALL', call)
  local meta, organization, j, fields = {}, nil, nil, {}
  for i = 1, #hash, 2 do
    local name = hash[i]
    if string.sub(name, 1, 2) == 'm:' then
      meta[name] = hash[i + 1]
    elseif name == 'r:organization_id' then
      organization = hash[i + 1]
    elseif name == 'j' then
      j = hash[i + 1]
    end
    if not BOOKKEEPING[name] then
      fields[name] = hash[i + 1]
    end
  end
  local tenant = value_text(organization) or ''
  if tenant == 'null' then
    tenant = ''
  end
  for _, message in ipairs(messages) do
    local kind, revision, audience = message[1], message[2], message[3]
    local id = 'msg_' .. string.sub(sha1hex(sid .. '\n' .. kind .. '\n' .. revision .. '\n' .. tenant), 1, 32)
    -- The record id as text: cjson writes numbers with 14 significant digits, and ids have 16.
    local message = {id = id, type = kind, revision = revision, at = tonumber(at), v = tonumber(version), rid = rid,
                     m = meta, o = organization, to = audience}
    if j then
      message.j = stored(j)
    else
      message.f = fields
    end
    redis.call('HSET', outbox, id, cjson.encode(message))
  end
end
