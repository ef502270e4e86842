-- Requeues failed jobs of one queue in one step each: a job still in the failed registry is taken
-- out of it, gets RQ's own writes for a requeue (recorded on a pipeline that is never executed; see
-- `replay`), and is inserted at its priority; a job no longer there (requeued or deleted
-- meanwhile) is skipped.
-- KEYS[1] = the queue list, KEYS[2] = its wake-up list, KEYS[3] = its window priorities,
-- KEYS[4] = its window counts, KEYS[5] = the failed job registry, KEYS[5 + j] = job j's hash
-- (MAX_BATCH jobs at most)
-- ARGV[1] = backlog key prefix, ARGV[2] = job hash key prefix, ARGV[3] = default priority,
-- ARGV[4...] = for each job: id, priority, "back" or "front", number of write words, the writes
-- Returns how many jobs were requeued.
local q = queue(KEYS[1], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3])
check_batch(#KEYS - 5)
local requeued, n, i = 0, refill(q), 4
for j = 6, #KEYS do
  local job_id, words = ARGV[i], tonumber(ARGV[i + 3])
  if redis.call('ZSCORE', KEYS[5], job_id) and redis.call('EXISTS', KEYS[j]) == 1 then
    n = insert(q, job_id, tonumber(ARGV[i + 1]), ARGV[i + 2], n)  -- first: see enqueue
    redis.call('ZREM', KEYS[5], job_id)
    replay(ARGV, i + 4, words, ARGV[2], job_id, KEYS[j])
    requeued = requeued + 1
  end
  i = i + 4 + words
end
if requeued > 0 then ring(KEYS[2]) end
return requeued
