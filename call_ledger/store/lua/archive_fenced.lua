-- One write to the archive's pass state (`{cl:archive}:pass`, `:batch`, `:files`, `:seq`), made only by the
-- process that holds the archive's lock: a process that lost it (stopped longer than its lease, while another
-- took over its pass) can no longer change the pass. The keys share the `{<prefix>:archive}` hash tag, so
-- this is one slot on a Redis Cluster too.
-- KEYS: the lock, the key written. ARGV: the holder's token, the command, its arguments.
-- Returns {1, the command's reply}, or {0} when the lock is not the holder's (nothing is written).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
return {1, redis.call(ARGV[2], KEYS[2], unpack(ARGV, 3))}
