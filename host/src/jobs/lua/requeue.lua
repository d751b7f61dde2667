-- requeue(job, run stream, pending hash, dead set; json, id, size, route): a finished
-- job back in the run lane (an operator's re-run), outside the bounds.
redis.call('SET', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'id', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'count', 1)
redis.call('HINCRBY', KEYS[3], 'bytes', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'route:' .. ARGV[4], 1)
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
