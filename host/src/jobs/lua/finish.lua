-- finish(job, run stream, pending hash, delivery stream; json or "", entry, size, route,
-- owes webhook "1"/"0", retention ms, group, id): ends a run claim. The first claim to
-- end removes the entry, releases the bounds and records the job (when json is given):
-- with a webhook owed it joins the delivery stream, else it expires after the
-- retention. A later claim on the same entry (a process taken for dead that was not)
-- changes nothing.
redis.call('XACK', KEYS[2], ARGV[7], ARGV[2])
if redis.call('XDEL', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[3], 'count', -1)
redis.call('HINCRBY', KEYS[3], 'bytes', -tonumber(ARGV[3]))
if redis.call('HINCRBY', KEYS[3], 'route:' .. ARGV[4], -1) <= 0 then
  redis.call('HDEL', KEYS[3], 'route:' .. ARGV[4])
end
if ARGV[1] == '' then return 1 end
if ARGV[5] == '1' then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('XADD', KEYS[4], '*', 'id', ARGV[8])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[6])
end
return 1
