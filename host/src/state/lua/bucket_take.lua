-- bucket_take(key; now, interval, capacity = burst * interval, max_wait, queue_span =
-- max_queue * interval), all nanoseconds: GCRA, as filters/limiter/src/bucket.rs.
-- Returns {outcome, tat, paused_until, wait}.
local interval, capacity = parse(ARGV[2]), parse(ARGV[3])
local max_wait, queue_span = parse(ARGV[4]), parse(ARGV[5])
local function result(outcome, wait)
  return {outcome, fmt(tat), fmt(paused), fmt(wait)}
end
if cmp(paused, now) > 0 then return result('paused', sub(paused, now)) end
local new_tat = add(later(tat, now), interval)
local ahead = sub(new_tat, now)
if cmp(ahead, capacity) <= 0 then
  tat = new_tat
  store()
  return result('admitted', {0, 0})
end
-- The token comes when the debt is back within capacity.
local wait = sub(ahead, capacity)
if ARGV[4] == '0' then return result('empty', wait) end
-- ceil(wait / interval) > max_queue, without a division.
if cmp(wait, queue_span) > 0 then return result('queue_full', wait) end
if cmp(wait, max_wait) > 0 then return result('too_long', wait) end
tat = new_tat
store()
return result('reserved', wait)
