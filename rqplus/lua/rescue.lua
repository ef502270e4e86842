-- Puts an abandoned job back in its queue at its priority, atomically (see `rqplus.recovery`).
-- KEYS[1] = the queue list, KEYS[2] = its wake-up list, KEYS[3] = its window priorities,
-- KEYS[4] = its window counts,
-- KEYS[5] = where the id is held: the started registry (zset) or the intermediate list
-- KEYS[6] = the failed job registry (rq:failed:<name>)
-- KEYS[7] = the intermediate list: a started job's id can linger there when its worker died
--           between starting it and clearing it, and must not come back a second time
-- KEYS[8] = the job hash
-- KEYS[9] = the alive key of the worker that held it (rqplus:worker:<name>:alive), when given: the
--           job is left alone while that key exists (absent for intermediate ids, and for a worker
--           handing back its own job)
-- ARGV[1] = job id, ARGV[2] = job hash key prefix, ARGV[3] = default priority
-- ARGV[4] = the started-registry entry, or "" for an id held in the intermediate list
-- ARGV[5] = most rescues before the job fails, ARGV[6] = failed registry score (expiry time)
-- ARGV[7] = the queue's backlog key prefix, ARGV[8] = the job's priority
-- Returns: n >= 1 requeued (n = rescues so far; 0 for an intermediate id, not counted),
--          -1 failed after too many rescues (the caller records why),
--          -2 nothing done: the worker is alive again, the id is gone (someone else rescued it),
--             or the job hash no longer exists (the id is dropped).
local q = queue(KEYS[1], KEYS[3], KEYS[4], ARGV[7], ARGV[2], ARGV[3])
local held, failed, intermediate, job_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local job_id, entry = ARGV[1], ARGV[4]
if entry ~= '' then
  if KEYS[9] and redis.call('EXISTS', KEYS[9]) == 1 then return -2 end
  if redis.call('ZREM', held, entry) == 0 then return -2 end
  redis.call('LREM', intermediate, 0, job_id)
else
  if redis.call('LREM', held, 1, job_id) == 0 then return -2 end
end
if redis.call('EXISTS', job_key) == 0 then return -2 end
local rescues = 0
if entry ~= '' then
  rescues = redis.call('HINCRBY', job_key, 'rescues', 1)
  if rescues > tonumber(ARGV[5]) then
    redis.call('HSET', job_key, 'status', 'failed')
    redis.call('ZADD', failed, ARGV[6], job_id)
    return -1
  end
end
redis.call('HSET', job_key, 'status', 'queued')
insert(q, job_id, tonumber(ARGV[8]), 'back', refill(q))
ring(KEYS[2])
return rescues
