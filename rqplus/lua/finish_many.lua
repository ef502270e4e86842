-- The ends of a batch of jobs that succeeded, as RQ's `handle_execution_ended` and
-- `handle_job_success` record one with no dependents (Result.create, the finished registry,
-- Job.cleanup, Execution.delete, the worker's counters), in one call. A job that has dependents
-- is left alone (RQ's own steps enqueue them): its position in the batch is returned.
-- ARGV[1..4] = now (integer seconds), now as RQ's date text, worker name, whether KEYS[2] is the
--   worker's execution index ("1": rq 3.x; rq 2.12 has none);
-- then per job (MAX_BATCH at most): job id, execution id, execution start (float seconds, as text),
--   end (the same), result TTL (-1: forever), the result's base64 text ("": None), the end as RQ's
--   date text, the job's working time (s).
-- KEYS: the worker's hash, [its execution index], then per job: job hash, dependents set,
--   dependencies set, results stream, finished registry, started registry, execution hash,
--   execution registry.
local now, text, worker = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local index = ARGV[4] == '1' and KEYS[2] or nil
local first = index and 2 or 1
check_batch((#KEYS - first) / 8)
local left, done, working = {}, 0, 0
for i = 5, #ARGV, 8 do
  local position = (i - 5) / 8 + 1
  local k = first + 8 * (position - 1)  -- this job's keys: KEYS[k + 1] .. KEYS[k + 8]
  local job_key, dependents, dependencies, results = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local finished, started, execution, registry = KEYS[k + 5], KEYS[k + 6], KEYS[k + 7], KEYS[k + 8]
  local job_id, execution_id, ttl, value = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 4]), ARGV[i + 5]
  if redis.call('EXISTS', dependents) == 1 then
    table.insert(left, position)
  else
    redis.call('HSET', job_key, 'last_heartbeat', text, 'status', 'finished', 'ended_at', ARGV[i + 6])
    local fields = {'type', '1', 'worker_name', worker}
    if value ~= '' then table.insert(fields, 'return_value'); table.insert(fields, value) end
    for _, field in ipairs({'execution_id', execution_id, 'execution_started_at', ARGV[i + 2],
                            'execution_ended_at', ARGV[i + 3]}) do table.insert(fields, field) end
    redis.call('XADD', results, 'MAXLEN', '~', 10, '*', unpack(fields))
    if ttl == -1 then
      redis.call('PERSIST', results)
      redis.call('ZADD', finished, '+inf', job_id)
    else
      redis.call('EXPIRE', results, ttl)
      redis.call('ZADD', finished, now + ttl, job_id)
      redis.call('EXPIRE', job_key, ttl)
      redis.call('EXPIRE', dependents, ttl)
      redis.call('EXPIRE', dependencies, ttl)
    end
    local composite = job_id .. ':' .. execution_id
    redis.call('DEL', execution)
    redis.call('ZREM', started, composite)
    redis.call('ZREM', registry, execution_id)
    if index then redis.call('SREM', index, composite) end
    done = done + 1
    working = working + tonumber(ARGV[i + 7])
  end
end
if done > 0 then
  redis.call('HINCRBY', KEYS[1], 'successful_job_count', done)
  redis.call('HINCRBYFLOAT', KEYS[1], 'total_working_time', string.format('%.6f', working))
end
return left
