-- redeliver(job, delivery stream, dead set; json, id): a dead job's webhook, owed again.
redis.call('SET', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'id', ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
