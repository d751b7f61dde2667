-- compare_and_swap(key; absent "1"/"0", expected, new, ttl_ms or ""): stores new only
-- if the value is absent (absent = "1") or equals expected. 1 if it stored, else 0.
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[4] == '' then
  redis.call('SET', KEYS[1], ARGV[3])
elseif ARGV[4] == '0' then
  -- Expires at once, as a zero TTL does in the memory backend.
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return 1
