-- Hand out `count` record ids from the counter, jumping forward first if the counter may
-- have gone backwards: replication is asynchronous, so a replica promoted after its master
-- died can hold an older counter than the ids the master already gave (and the calls on
-- other nodes that keep them). Two calls with one id would break `/calls/{id}` and the
-- indexes (keyed by id), so before counting on a node the script checks that the counter
-- was last advanced on this very node and history: the fence key holds the replication id
-- (`master_replid`) of the node that wrote the counter. A promotion gives a node a new
-- replication id, so does a restart or a slot's move to another master; then the counter
-- jumps by ARGV[2] (far more ids than a replication lag can lose) and the fence is reset.
-- A brand-new store (no counter, no fence) starts at 1, unless this node was promoted
-- (`master_replid2` set: it took over from a master whose last writes it may have missed).
--
-- KEYS[1]: the counter, KEYS[2]: its fence, KEYS[3]: the key of the ids' permutation (all in one
-- hash slot). ARGV[1]: count, ARGV[2]: jump, ARGV[3]: a fresh random key, kept if none is yet.
-- Returns {the last counter value handed out (they are last - count + 1 .. last), the key}:
-- the worker makes each value a record id under the key (call_ledger/core/record_ids.py).
-- Where INFO is not available (the embedded store: no replicas, nothing to fail over),
-- it is a plain INCRBY.
local info = redis.pcall('INFO', 'replication')
if type(info) == 'string' then
  local replid = string.match(info, 'master_replid:(%x+)')
  local fence = redis.call('GET', KEYS[2])
  if replid and fence ~= replid then
    local promoted = string.match(info, 'master_replid2:(%x+)')
    if fence or redis.call('EXISTS', KEYS[1]) == 1 or (promoted and string.find(promoted, '[^0]')) then
      redis.call('INCRBY', KEYS[1], ARGV[2])
    end
    redis.call('SET', KEYS[2], replid)
  end
end
redis.call('SET', KEYS[3], ARGV[3], 'NX')
return {redis.call('INCRBY', KEYS[1], ARGV[1]), redis.call('GET', KEYS[3])}
