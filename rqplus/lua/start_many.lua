-- The starts of a batch of fetched jobs, as RQ records one (`Execution.create`,
-- `Job.prepare_for_execution`, `prepare_job_execution`) for each, in one call.
-- ARGV[1..7] = now (float seconds), now as RQ's date text, worker name, TTL (s), whether the
--   execution hash holds job_id ("1": rq 3.x), the number of queues Q, whether KEYS[1] is the
--   worker's execution index ("1": rq 3.x; rq 2.12 has none);
-- then per job (MAX_BATCH at most): job id, its queue's index (1-based), execution id.
-- KEYS: [the worker's execution index], then Q pairs (started registry, intermediate list), then
--   per job: its job hash, its execution hash, its execution registry.
local now, text, worker, ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local expires = math.floor(now) + ttl
local index = ARGV[7] == '1' and KEYS[1] or nil
local first = (index and 1 or 0)
local jobs = first + 2 * tonumber(ARGV[6])
check_batch((#KEYS - jobs) / 3)
for i = 8, #ARGV, 3 do
  local job_id, queue, execution_id = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local k = jobs + (i - 8) + 1  -- this job's three keys: KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local job_key, execution, registry = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local started, intermediate = KEYS[first + 2 * queue - 1], KEYS[first + 2 * queue]
  local composite = job_id .. ':' .. execution_id
  redis.call('HSET', execution, 'id', execution_id, 'created_at', ARGV[1], 'last_heartbeat', ARGV[1],
             'worker_name', worker)
  if ARGV[5] == '1' then redis.call('HSET', execution, 'job_id', job_id) end
  redis.call('EXPIRE', execution, ttl)
  redis.call('ZADD', registry, expires + 60, execution_id)
  redis.call('EXPIRE', registry, ttl + 60)
  redis.call('ZADD', started, expires, composite)
  if index then
    redis.call('SADD', index, composite)
    redis.call('EXPIRE', index, ttl + 60)
  end
  redis.call('HSET', job_key, 'last_heartbeat', text, 'status', 'started', 'started_at', text, 'worker_name', worker)
  redis.call('PERSIST', job_key)
  redis.call('LREM', intermediate, 1, job_id)
end
return 1
