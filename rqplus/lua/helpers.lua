-- Shared by every rqplus function: the constants, priority order for one queue, and the replay of
-- RQ's own writes. Loaded once with the library, ahead of the functions, which see these locals as
-- upvalues (rqplus/lua/__init__.py assembles it); on Redis < 7 put in front of each script instead.

-- Constants, each defined here only: rqplus reads them from this file (rqplus.lua.constant), for
-- rqplus.scripts.WINDOW / WAKE_TOKENS / MAX_BATCH and rqplus.defaults.MIN_PRIORITY / MAX_PRIORITY.
-- WINDOW: jobs kept in run order in the queue's LIST (rq:queue:<name>); the rest wait in one backlog
-- list per level, so an insert costs O(WINDOW), never O(backlog).
local WINDOW = 1000
-- WAKE_TOKENS: tokens kept at most in a queue's wake-up list (one per push).
local WAKE_TOKENS = 64
-- MIN_PRIORITY, MAX_PRIORITY: the most and the least urgent level (lower runs first).
local MIN_PRIORITY = 0
local MAX_PRIORITY = 9
-- MAX_BATCH: most jobs one call of a function may take (inserts, enqueues, starts, ends, fetches), so
-- that no call holds Redis for long, whatever its caller sends.
local MAX_BATCH = 1000

-- the levels' key suffixes, most urgent first (made once, at load: no number formatting per call)
local LEVELS = {}
for level = MIN_PRIORITY, MAX_PRIORITY do LEVELS[#LEVELS + 1] = '' .. level end

-- Priority order for one queue. A queue is a table of its keys (see rqplus.priority):
--   list     the window: RQ's LIST, at most WINDOW ids in run order (priorities ascend from the head,
--            FIFO among equals), so RQ's dequeue, `rq info` and rq-dashboard read an ordered list
--   window   hash: id -> priority of each job in the list (no job hash is read to order jobs)
--   counts   hash: level -> how many of the list's jobs are at that level, so an insert finds its
--            index without searching; rebuilt from `window` whenever the counts do not add up to
--            the list's length (stock RQ code popped or pushed, `Queue.remove`)
--   backlog  prefix of the backlog lists: list backlog .. level holds the rest of that level, FIFO
--            (key names built here: the level is only known here)
--   jobs     prefix of the job hashes (jobs .. id: built here for ids read from the lists)
--   default  priority of list ids without a recorded one (pushed by stock RQ code)
-- Invariant: every job in the list runs before every job in the backlog. Stock RQ code that pops
-- the list does not refill it; the next rqplus push or pop on the queue does.
local function queue(list, window, counts, backlog, jobs, default)
  return {list = list, window = window, counts = counts, backlog = backlog, jobs = jobs, default = tonumber(default)}
end

-- refuses a call of more than MAX_BATCH jobs
local function check_batch(jobs)
  if jobs > MAX_BATCH then
    error({err = 'ERR rqplus: ' .. jobs .. ' jobs in one call, more than MAX_BATCH (' .. MAX_BATCH .. ')'})
  end
end

local function ring(wake)
  redis.call('RPUSH', wake, '1')
  redis.call('LTRIM', wake, -WAKE_TOKENS, -1)
end

-- a forged or corrupted entry counts as the default (and never names a level outside the range)
local function level_of(value, default)
  local p = tonumber(value)
  if not p or p ~= math.floor(p) or p < MIN_PRIORITY or p > MAX_PRIORITY then return default end
  return p
end

local function window_priority(q, id)
  return level_of(redis.call('HGET', q.window, id), q.default)
end

local function count(q, level, by)
  redis.call('HINCRBY', q.counts, level, by)
end

-- how many of the list's n jobs are at each level (a table indexed like LEVELS)
local function level_counts(q, n)
  local raw = redis.call('HMGET', q.counts, unpack(LEVELS))
  local counts, total = {}, 0
  for k = 1, #LEVELS do
    counts[k] = tonumber(raw[k]) or 0
    total = total + counts[k]
  end
  if total == n then return counts end
  for k = 1, #LEVELS do counts[k] = 0 end
  local ids = redis.call('LRANGE', q.list, 0, -1)
  for start = 1, #ids, 500 do
    local chunk = {unpack(ids, start, math.min(start + 499, #ids))}
    local levels = redis.call('HMGET', q.window, unpack(chunk))
    for k = 1, #chunk do
      local index = level_of(levels[k], q.default) - MIN_PRIORITY + 1
      counts[index] = counts[index] + 1
    end
  end
  local fields = {}
  for k, level in ipairs(LEVELS) do table.insert(fields, level); table.insert(fields, counts[k]) end
  redis.call('HSET', q.counts, unpack(fields))
  return counts
end

-- drops entries of ids no longer in the list (popped by stock RQ code), once they pile up
local function tidy(q)
  if redis.call('HLEN', q.window) <= 2 * WINDOW then return end
  local kept = {}
  local ids = redis.call('LRANGE', q.list, 0, 4 * WINDOW)
  for start = 1, #ids, 500 do
    local chunk = {unpack(ids, start, math.min(start + 499, #ids))}
    local levels = redis.call('HMGET', q.window, unpack(chunk))
    for k, id in ipairs(chunk) do
      if levels[k] then table.insert(kept, id); table.insert(kept, levels[k]) end
    end
  end
  redis.call('DEL', q.window, q.counts)
  for start = 1, #kept, 1000 do redis.call('HSET', q.window, unpack(kept, start, math.min(start + 999, #kept))) end
end

-- whether a backlog id still names a queued job: stock RQ's cancel and delete remove ids from the
-- list only, so such ids are dropped here, on their way into the list
local function still_queued(q, id)
  local status = redis.pcall('HGET', q.jobs .. id, 'status')
  if status == false then return redis.call('EXISTS', q.jobs .. id) == 1 end
  return status ~= 'canceled'  -- a key that is no hash is kept: the worker quarantines it
end

-- moves backlog jobs, most urgent level first, to the list's tail until it holds WINDOW jobs;
-- returns the list's length
local function refill(q)
  tidy(q)
  local n = redis.call('LLEN', q.list)
  if n >= WINDOW then return n end
  local levels = {}
  for k, level in ipairs(LEVELS) do levels[k] = q.backlog .. level end
  if redis.call('EXISTS', unpack(levels)) == 0 then return n end
  for k, key in ipairs(levels) do
    local moved = 0
    while n < WINDOW do
      local ids = redis.call('LPOP', key, WINDOW - n)
      if not ids then break end
      for _, id in ipairs(ids) do
        if still_queued(q, id) then
          redis.call('RPUSH', q.list, id)
          redis.call('HSET', q.window, id, LEVELS[k])
          n = n + 1
          moved = moved + 1
        end
      end
    end
    if moved > 0 then count(q, LEVELS[k], moved) end
    if n >= WINDOW then break end
  end
  return n
end

-- forgets a job id that left the list (its priority entry and its level's count)
local function left_window(q, id)
  local level = redis.call('HGET', q.window, id)
  if level then
    redis.call('HDEL', q.window, id)
    count(q, level, -1)
  end
end

-- puts job_id, of priority p, in its place: into the list if it runs before the list's last job
-- (that job then moves to the front of its backlog level), else into its backlog level. mode
-- "back": after the jobs of equal or more urgent priority; "front" (at_front=True): before the jobs
-- of equal or less urgent priority. n is the list's length, as `refill` (called once before a run
-- of inserts) or the previous insert returned; returns the new length.
local function insert(q, job_id, p, mode, n)
  if n >= WINDOW then
    local last = window_priority(q, redis.call('LINDEX', q.list, -1))
    if last < p or (last == p and mode ~= 'front') then  -- runs after the whole list
      if mode == 'front' then redis.call('LPUSH', q.backlog .. p, job_id) else redis.call('RPUSH', q.backlog .. p, job_id) end
      return n
    end
  end
  -- its index: after every job of a more urgent level, and of its own level unless "front"
  local index = 0
  for k, c in ipairs(level_counts(q, n)) do
    local level = k - 1 + MIN_PRIORITY
    if level < p or (level == p and mode ~= 'front') then index = index + c end
  end
  if index >= n then
    redis.call('RPUSH', q.list, job_id)
  elseif index == 0 then
    redis.call('LPUSH', q.list, job_id)
  else
    redis.call('LINSERT', q.list, 'BEFORE', redis.call('LINDEX', q.list, index), job_id)
  end
  redis.call('HSET', q.window, job_id, p)
  count(q, p, 1)
  if n >= WINDOW then
    local last = redis.call('RPOP', q.list)
    redis.call('LPUSH', q.backlog .. window_priority(q, last), last)
    left_window(q, last)
    return n
  end
  return n + 1
end

-- RQ's own writes for one job (recorded by rqplus on a pipeline it never executes), flattened in
-- args (ARGV) from index i on: for each write its number of words, then the words; `words` words in all.
-- Only the commands RQ uses to save a job (REPLAYED, as redis-py names them), each on a key of that
-- job: under the job prefix and naming the job id (its hash, its dependents and dependencies sets:
-- names RQ built, in args). So a caller cannot make a function run anything else, and each write
-- costs O(its words). Each write is checked before it runs: a forged one stops the call there.
local REPLAYED = {HSET = true, HDEL = true, EXPIRE = true, PERSIST = true}
local function replay(args, i, words, prefix, job_id, job_key)
  local last = i + words - 1
  while i <= last do
    local n, command, key = tonumber(args[i]), args[i + 1], args[i + 2]
    if not n or n < 2 or i + n > last or not REPLAYED[command] or (key ~= job_key and
       (string.find(key, prefix, 1, true) ~= 1 or not string.find(key, job_id, #prefix + 1, true))) then
      error({err = 'ERR rqplus: write ' .. tostring(command) .. ' ' .. tostring(key) .. ' is not one of job '
                   .. job_id .. "'s own writes"})
    end
    redis.call(unpack(args, i + 1, i + n))
    i = i + n + 1
  end
end
