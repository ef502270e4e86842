-- Batch fetch for workers that run several jobs at once: up to ARGV[2] ids, from the first queue on
-- (as reliable_fetch, each moved into its queue's intermediate list before the function returns, the
-- list refilled), each with its job hash, so a worker starts a batch in one round trip.
-- KEYS, ARGV[1] as reliable_fetch; ARGV[2] = how many at most (the first included; MAX_BATCH at
-- most), ARGV[3] = the index of the queue whose intermediate list already holds the first id (a
-- blocking move just took it), or 0; ARGV[4] = that id; ARGV[4 + i] = queue i's backlog prefix.
-- The job hashes are read at ARGV[1] .. id (key names built here: the ids are read from the lists).
-- Returns a flat list of triples {queue index (1-based), job id, the job hash as HGETALL returns it
-- ({} if the key is gone, {'rqplus:not-a-hash', its type} if it holds no hash)}.
local want, found, first = tonumber(ARGV[2]), {}, tonumber(ARGV[3])
check_batch(want)
local queues = {}
for i = 1, #KEYS, 4 do queues[#queues + 1] = queue(KEYS[i], KEYS[i + 2], KEYS[i + 3], ARGV[(i + 3) / 4 + 4], ARGV[1]) end
local function take(index, job_id)
  left_window(queues[index], job_id)
  local kind, fields = redis.call('TYPE', ARGV[1] .. job_id).ok, {}
  if kind == 'hash' then fields = redis.call('HGETALL', ARGV[1] .. job_id)
  elseif kind ~= 'none' then fields = {'rqplus:not-a-hash', kind} end
  for _, value in ipairs({index, job_id, fields}) do table.insert(found, value) end
end
if first > 0 then
  take(first, ARGV[4])
  refill(queues[first])
  want = want - 1
end
for index, q in ipairs(queues) do
  while want > 0 do
    local ids = redis.call('LPOP', q.list, want)
    if not ids and refill(q) > 0 then ids = redis.call('LPOP', q.list, want) end
    if not ids then break end
    redis.call('RPUSH', KEYS[4 * index - 2], unpack(ids))
    for _, job_id in ipairs(ids) do take(index, job_id) end
    want = want - #ids
    refill(q)
  end
end
return found
