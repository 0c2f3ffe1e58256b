-- Acknowledge a batch's entries of one stream shard and forget the failure reasons of those that
-- had one. The worker sends it right after the batch's index scripts, in one pipeline, on one
-- Redis server (worker/consumer.py), where a plain XACK would run whatever the index update
-- before it answered. Redis refuses it whenever it refused that update: on a replica, while
-- loading or busy, after a failed save (every write is refused then, XACK too), and out of memory:
-- XACK alone is allowed there, so the script first makes a write Redis refuses out of memory
-- (a field added to the failures hash and removed at once: no one ever sees it).
--
-- KEYS[1]: the stream, KEYS[2]: its failures hash. ARGV[1]: the group, ARGV[2]: n, then n entry
-- ids to acknowledge, then the ids whose failure reasons go.
redis.call('HINCRBY', KEYS[2], '-', 0)
redis.call('HDEL', KEYS[2], '-')
local n = tonumber(ARGV[2])
local function each(first, last, command, key, extra)
  -- In slices: unpack() of a whole batch could exceed Lua's stack.
  for i = first, last, 500 do
    local upto = math.min(i + 499, last)
    if extra then
      redis.call(command, key, extra, unpack(ARGV, i, upto))
    else
      redis.call(command, key, unpack(ARGV, i, upto))
    end
  end
end
each(3, 2 + n, 'XACK', KEYS[1], ARGV[1])
each(3 + n, #ARGV, 'HDEL', KEYS[2], nil)
return n
