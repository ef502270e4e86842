-- Reliable multi-queue fetch: moves the head of the first non-empty queue (in the order given) to
-- that queue's intermediate list, atomically, so the id is always in some list; then refills that
-- queue's list from its backlog (see `refill`). LPOP + RPUSH inside a function is LMOVE.
-- KEYS[4i-3..4i] = queue i's list, its intermediate list (rq:queue:<name>:intermediate), its window
--                  priorities, its window counts
-- ARGV[1] = job hash key prefix, ARGV[1 + i] = queue i's backlog key prefix
-- Returns {queue key, job id}, or nil when every queue is empty.
for i = 1, #KEYS, 4 do
  local q = queue(KEYS[i], KEYS[i + 2], KEYS[i + 3], ARGV[(i + 3) / 4 + 1], ARGV[1])
  local job_id = redis.call('LPOP', q.list)
  if not job_id and refill(q) > 0 then job_id = redis.call('LPOP', q.list) end
  if job_id then
    redis.call('RPUSH', KEYS[i + 1], job_id)
    left_window(q, job_id)
    refill(q)
    return {q.list, job_id}
  end
end
return nil
