-- progress(job; json, what): records a job's progress unless another claim has moved
-- it on. what = "run": a run starts, refused once the job is final; "delivery": a
-- failed delivery attempt, refused once the webhook is no longer owed. 1 if stored.
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local job = cjson.decode(current)
if ARGV[2] == 'run' then
  if job.state == 'succeeded' or job.state == 'failed' or job.state == 'dead' then return 0 end
elseif type(job.webhook) ~= 'table' or job.webhook.state ~= 'pending' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
