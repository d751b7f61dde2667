-- Exact arithmetic on u64 nanosecond values in Lua's doubles: a value is {seconds,
-- nanoseconds}, each part well within the 2^53 that a double holds exactly.
local BILLION = 1000000000
local function parse(text)
  local len = #text
  if len <= 9 then return {0, tonumber(text)} end
  return {tonumber(string.sub(text, 1, len - 9)), tonumber(string.sub(text, len - 8))}
end
local function fmt(t)
  if t[1] == 0 then return string.format('%d', t[2]) end
  return string.format('%d%09d', t[1], t[2])
end
local function cmp(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] and -1 or 1 end
  if a[2] ~= b[2] then return a[2] < b[2] and -1 or 1 end
  return 0
end
local function add(a, b)
  local s, n = a[1] + b[1], a[2] + b[2]
  if n >= BILLION then s, n = s + 1, n - BILLION end
  return {s, n}
end
-- a - b, or 0 when b is later.
local function sub(a, b)
  if cmp(a, b) <= 0 then return {0, 0} end
  local s, n = a[1] - b[1], a[2] - b[2]
  if n < 0 then s, n = s - 1, n + BILLION end
  return {s, n}
end
local function later(a, b)
  if cmp(a, b) >= 0 then return a end
  return b
end
-- Milliseconds, rounded up.
local function ms_ceil(d)
  return d[1] * 1000 + math.ceil(d[2] / 1000000)
end

-- The bucket under KEYS[1]: "<tat> <paused_until>"; absent or unreadable is full.
local tat, paused = {0, 0}, {0, 0}
local stored = redis.call('GET', KEYS[1])
if stored then
  local a, b = string.match(stored, '^(%d+) (%d+)$')
  if a then tat, paused = parse(a), parse(b) end
end
local now = parse(ARGV[1])
-- Stores the bucket, expiring when it is full and unpaused again (absent means that).
local function store()
  local ms = ms_ceil(sub(later(tat, paused), now))
  if ms == 0 then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], fmt(tat) .. ' ' .. fmt(paused), 'PX', ms)
  end
end
