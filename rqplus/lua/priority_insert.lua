-- Inserts job ids into one queue at their priorities (see `insert`), ringing its wake-up list once.
-- KEYS[1] = the queue list (rq:queue:<name>), KEYS[2] = its wake-up list (rqplus:wake:<name>),
-- KEYS[3] = its window priorities, KEYS[4] = its window counts (see rqplus.priority)
-- ARGV[1] = backlog key prefix, ARGV[2] = job hash key prefix (rq:job:),
-- ARGV[3] = priority assumed for list ids without a recorded one (pushed by stock RQ code)
-- ARGV[4...] = for each job (MAX_BATCH at most): id, priority, "back" or "front", and "move" to first
--              take the id out of the list (searching from the tail: to re-sort a job stock RQ code
--              pushed), or ""
-- Returns how many ids were inserted (a "move" id not found in the list is skipped).
local q = queue(KEYS[1], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3])
check_batch((#ARGV - 3) / 4)
local inserted = 0
local n = refill(q)
for i = 4, #ARGV, 4 do
  local job_id = ARGV[i]
  if ARGV[i + 3] ~= 'move' or redis.call('LREM', q.list, -1, job_id) == 1 then
    if ARGV[i + 3] == 'move' then
      left_window(q, job_id)
      n = refill(q)
    end
    n = insert(q, job_id, tonumber(ARGV[i + 1]), ARGV[i + 2], n)
    inserted = inserted + 1
  end
end
if inserted > 0 then ring(KEYS[2]) end
return inserted
