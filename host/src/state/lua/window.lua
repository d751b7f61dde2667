-- window_add(key; kind, ...): sums of integer records, per lane, over a window, as
-- host/src/state/prims.rs does for the memory backend. The record is "=" and its lanes,
-- comma-separated ("=" alone: no lanes), or "" to only read.
--   "time", at_slot, now_slot, slots, slot_ms, expire_ms, record: a hash with k = "time",
--     ms (the slot width) and one field per slot, "<slot>" = the sums of its records.
--   "count", capacity, ttl_ms or "", record: a hash with k = "count", a ring of the last
--     records (r<i>), h (the oldest), n (held), s (their sums) and l (l[i]: how many held
--     records have lane i, so the sums have as many lanes as the longest record held).
-- A key holding the other kind, or another slot width, counts as empty.
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
local key, kind = KEYS[1], ARGV[1]
local held = redis.call('HGET', key, 'k')
if held and held ~= kind then
  if ARGV[#ARGV] == '' then return {} end
  redis.call('DEL', key)
end

if kind == 'time' then
  local now, slots = tonumber(ARGV[3]), tonumber(ARGV[4])
  local at = math.min(tonumber(ARGV[2]), now)
  local width, expire, record = ARGV[5], ARGV[6], ARGV[7]
  local rec = lanes(string.sub(record, 2))
  local gone = now - slots
  local ms = redis.call('HGET', key, 'ms')
  if ms and ms ~= width then
    if record == '' then return {} end
    redis.call('DEL', key)
  end
  if record ~= '' and at > gone then
    local field = string.format('%d', at)
    local current = redis.call('HGET', key, field)
    redis.call('HSET', key, 'k', 'time', 'ms', width, field, csv(plus(lanes(current), rec, 1)))
  end
  local sums, left = {}, 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local slot = tonumber(all[i])
    if slot then
      if slot <= gone then
        redis.call('HDEL', key, all[i])
      else
        left = left + 1
        if slot <= now then plus(sums, lanes(all[i + 1]), 1) end
      end
    end
  end
  if left == 0 then
    redis.call('DEL', key)
  elseif record ~= '' then
    redis.call('PEXPIRE', key, expire)
  end
  return sums
end

local cap, ttl, record = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local h = tonumber(redis.call('HGET', key, 'h') or '0')
local n = tonumber(redis.call('HGET', key, 'n') or '0')
local c = tonumber(redis.call('HGET', key, 'c') or cap)
local sums = lanes(redis.call('HGET', key, 's'))
local have = lanes(redis.call('HGET', key, 'l'))
-- Drops the oldest record.
local function drop()
  local field = 'r' .. h
  local old = lanes(redis.call('HGET', key, field))
  redis.call('HDEL', key, field)
  plus(sums, old, -1)
  for i = 1, #old do have[i] = have[i] - 1 end
  h, n = (h + 1) % c, n - 1
end
-- The sums, as many lanes as the longest record held.
local function result()
  local out = {}
  for i = 1, #sums do
    if (have[i] or 0) <= 0 then break end
    out[i] = sums[i]
  end
  return out
end
if record == '' then
  -- Only the newest `cap` records count (the capacity may have shrunk).
  if n > cap then
    local out, counted = {}, {}
    for i = n - cap, n - 1 do
      local rec = lanes(redis.call('HGET', key, 'r' .. ((h + i) % c)))
      plus(out, rec, 1)
      for j = 1, #rec do counted[j] = true end
    end
    local trimmed = {}
    for j = 1, #out do
      if not counted[j] then break end
      trimmed[j] = out[j]
    end
    return trimmed
  end
  return result()
end
while n >= cap do drop() end
if c ~= cap then
  -- A new capacity (a config reload): move the records held to a ring of that size.
  local kept = {}
  for i = 0, n - 1 do
    local field = 'r' .. ((h + i) % c)
    kept[#kept + 1] = redis.call('HGET', key, field)
    redis.call('HDEL', key, field)
  end
  for i = 1, #kept do redis.call('HSET', key, 'r' .. (i - 1), kept[i]) end
  h, c = 0, cap
end
local rec = lanes(string.sub(record, 2))
redis.call('HSET', key, 'r' .. ((h + n) % c), csv(rec))
n = n + 1
plus(sums, rec, 1)
for i = 1, #rec do have[i] = (have[i] or 0) + 1 end
redis.call('HSET', key, 'k', 'count', 'c', c, 'h', h, 'n', n, 's', csv(sums), 'l', csv(have))
if ttl == '' then redis.call('PERSIST', key) else redis.call('PEXPIRE', key, ttl) end
return result()
