-- accept(job, run stream, pending hash; json, id, size, route, max jobs, max bytes):
-- stores the job and queues it unless the queue is at its bounds. "ok", or the bound
-- that refused it: "jobs" or "bytes".
local count = tonumber(redis.call('HGET', KEYS[3], 'count') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[3], 'bytes') or '0')
if count >= tonumber(ARGV[5]) then return 'jobs' end
if bytes + tonumber(ARGV[3]) > tonumber(ARGV[6]) then return 'bytes' end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'id', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'count', 1)
redis.call('HINCRBY', KEYS[3], 'bytes', ARGV[3])
redis.call('HINCRBY', KEYS[3], 'route:' .. ARGV[4], 1)
return 'ok'
