-- incr(key; delta, ttl_ms or ""): adds delta, creating the key at 0 first; the TTL is
-- set only when this call created the key. INCRBY refuses a value that is not an
-- integer, and an overflow, with an error the backend reports as "not an integer".
local existed = redis.call('EXISTS', KEYS[1])
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
