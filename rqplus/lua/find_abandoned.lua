-- Finds jobs that no live worker holds, for `rqplus.recovery`. Read only (no-writes).
-- KEYS[2i-1], KEYS[2i] = started registry (rq:wip:<name>) and intermediate list of queue i
-- ARGV[1] = execution hash key prefix (rq:execution:); an entry's worker is the execution's
--           `worker_name`, written with the registry entry (the job hash gets it only later)
-- ARGV[2] = rqplus worker key prefix (rqplus:worker:)
-- Key names built here: execution hashes (ARGV[1] .. a registry entry) and worker keys
-- (ARGV[2] .. a worker name read from an execution hash), named by what is read.
-- Returns a flat list of quadruples {queue index (1-based), started-registry entry or "", job id, worker}:
--  - entries whose rqplus worker (marker key present) stopped heartbeating (alive key gone);
--  - ids in an intermediate list with no entry in that queue's started registry (worker "").
local found = {}
local function add(i, entry, job_id, worker)
  for _, value in ipairs({(i + 1) / 2, entry, job_id, worker}) do table.insert(found, value) end
end
for i = 1, #KEYS, 2 do
  local started = {}
  for _, entry in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
    local job_id = string.match(entry, '^(.*):[^:]*$') or entry
    started[job_id] = true
    local worker = redis.call('HGET', ARGV[1] .. entry, 'worker_name')
    if worker and worker ~= '' and redis.call('EXISTS', ARGV[2] .. worker) == 1
       and redis.call('EXISTS', ARGV[2] .. worker .. ':alive') == 0 then
      add(i, entry, job_id, worker)
    end
  end
  for _, job_id in ipairs(redis.call('LRANGE', KEYS[i + 1], 0, -1)) do
    if not started[job_id] then add(i, '', job_id, '') end
  end
end
return found
