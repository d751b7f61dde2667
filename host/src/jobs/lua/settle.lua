-- settle(job, delivery stream, dead set; json or "", entry, retention ms, dead "1"/"0",
-- id, now ms, group): ends a delivery claim; with json, records the job, which then
-- expires after the retention, and lists it as dead when it is.
redis.call('XACK', KEYS[2], ARGV[7], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
if ARGV[1] == '' then return 1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5]) end
return 1
