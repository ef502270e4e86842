-- Enqueues jobs into one queue, each in one step with its ordered insert, so that nothing of a job
-- is written unless all of it is: checks first, then for each job the insert and RQ's own writes
-- for it (recorded on a pipeline that is never executed; see `replay`). Re-sending it after a
-- lost reply (redis-py retries, or rqplus') enqueues nothing twice.
-- KEYS[1] = the queue list, KEYS[2] = its wake-up list, KEYS[3] = its window priorities,
-- KEYS[4] = its window counts, KEYS[5] = the set of known queues (rq:queues),
-- KEYS[5 + j] = job j's hash (MAX_BATCH jobs at most)
-- ARGV[1] = backlog key prefix, ARGV[2] = job hash key prefix, ARGV[3] = default priority,
-- ARGV[4...] = for each job: id, priority, "back" or "front", its enqueued_at (RQ stamps it to the
--              microsecond at each enqueue: a job hash already holding it is this very enqueue,
--              re-sent, and that job is skipped), the number of words of its writes, the writes
-- Returns how many jobs were enqueued; an error, with nothing written, when the queue key is no list
-- or a job key holds something other than a hash (and an error when a write is not one of the job's
-- own: only a forged call has one).
local q = queue(KEYS[1], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3])
check_batch(#KEYS - 5)
local queue_type = redis.call('TYPE', q.list).ok
if queue_type ~= 'list' and queue_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. q.list .. ' holds a ' .. queue_type .. ', not a queue list: nothing enqueued')
end
local jobs, i = {}, 4
for j = 6, #KEYS do
  local job = {key = KEYS[j], id = ARGV[i], p = tonumber(ARGV[i + 1]), mode = ARGV[i + 2], first = i + 5,
               words = tonumber(ARGV[i + 4])}
  local job_type = redis.call('TYPE', job.key).ok
  if job_type == 'hash' then
    job.sent = redis.call('HGET', job.key, 'enqueued_at') == ARGV[i + 3]
  elseif job_type ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. job.key .. ' holds a ' .. job_type .. ', not a job hash: nothing enqueued')
  end
  jobs[#jobs + 1] = job
  i = job.first + job.words
end
local enqueued, n = 0, refill(q)
for _, job in ipairs(jobs) do
  if not job.sent then
    -- the insert first: a key of the queue's that Redis refuses (a forged or corrupted one) stops
    -- here before the job hash is written (an id left in the list without its hash is skipped)
    n = insert(q, job.id, job.p, job.mode, n)
    replay(ARGV, job.first, job.words, ARGV[2], job.id, job.key)
    enqueued = enqueued + 1
  end
end
if #jobs > 0 then redis.call('SADD', KEYS[5], q.list) end
if enqueued > 0 then ring(KEYS[2]) end
return enqueued
