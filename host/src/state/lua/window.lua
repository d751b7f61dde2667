-- window_add(key; kind, ...): sums of integer records, per lane, over a window.
--   "time", at_slot, now_slot, slots, expire_ms, record: a hash of slot -> "a,b,..".
--   "count", capacity, ttl_ms or "", record: a hash with a ring of the last records,
--   fields c (capacity), h (oldest), n (held), s (sums) and r<i> (the records).
-- The record is "" to only read.
local function lanes(csv)
  local out = {}
  if csv then
    for v in string.gmatch(csv, '[^,]+') do out[#out + 1] = tonumber(v) end
  end
  return out
end
local function plus(sums, rec, sign)
  for i = 1, #rec do sums[i] = (sums[i] or 0) + sign * rec[i] end
  return sums
end
local function csv(values)
  local parts = {}
  for i = 1, #values do parts[i] = string.format('%d', values[i]) end
  return table.concat(parts, ',')
end
local key = KEYS[1]

if ARGV[1] == 'time' then
  local at, now, slots = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local record = ARGV[6]
  local gone = now - slots
  if record ~= '' and at > gone then
    local field = ARGV[2]
    local current = redis.call('HGET', key, field)
    redis.call('HSET', key, field, csv(plus(lanes(current), lanes(record), 1)))
  end
  local sums = {}
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local slot = tonumber(all[i])
    if slot <= gone then
      redis.call('HDEL', key, all[i])
    elseif slot <= now then
      plus(sums, lanes(all[i + 1]), 1)
    end
  end
  if record ~= '' then redis.call('PEXPIRE', key, ARGV[5]) end
  return sums
end

local cap, ttl, record = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local c = tonumber(redis.call('HGET', key, 'c') or cap)
local h = tonumber(redis.call('HGET', key, 'h') or '0')
local n = tonumber(redis.call('HGET', key, 'n') or '0')
local sums = lanes(redis.call('HGET', key, 's'))
if c ~= cap then
  -- The capacity changed (a config reload): keep the newest records that fit.
  local kept = {}
  for i = 0, n - 1 do
    local field = 'r' .. ((h + i) % c)
    kept[#kept + 1] = redis.call('HGET', key, field)
    redis.call('HDEL', key, field)
  end
  local first = math.max(1, #kept - cap + 1)
  sums, h, n, c = {}, 0, 0, cap
  for i = first, #kept do
    redis.call('HSET', key, 'r' .. n, kept[i])
    plus(sums, lanes(kept[i]), 1)
    n = n + 1
  end
  redis.call('HSET', key, 'c', c, 'h', h, 'n', n, 's', csv(sums))
end
if record ~= '' then
  local slot
  if n == cap then
    slot = h
    plus(sums, lanes(redis.call('HGET', key, 'r' .. h)), -1)
    h = (h + 1) % cap
  else
    slot = (h + n) % cap
    n = n + 1
  end
  redis.call('HSET', key, 'r' .. slot, record, 'c', c, 'h', h, 'n', n, 's', csv(plus(sums, lanes(record), 1)))
  if ttl == '' then redis.call('PERSIST', key) else redis.call('PEXPIRE', key, ttl) end
end
return sums
