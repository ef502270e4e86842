"""Lua scripts run by rqplus, each a module constant documented with its KEYS and ARGV.

Scripts are run by :func:`run`: EVALSHA on a connection (Redis hashes a script's body on every
EVAL, about 15 µs for the scripts that share ``_INSERT``), falling back to EVAL when Redis lacks the
script; EVAL on a pipeline, which can never fail with NOSCRIPT inside an enqueue's MULTI/EXEC (that
would save the job hash but not queue it, e.g. right after a Redis restart flushed the script cache).

Every script that puts a job id into a queue shares ``_INSERT``, so priority order is kept in one
place, and rings the queue's wake-up list so that multi-queue workers blocked on it wake at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError
from rq.utils import as_text

from rqplus.defaults import MAX_PRIORITY, MIN_PRIORITY

#: Tokens kept at most in a queue's wake-up list (one per push; extra tokens only cost a sweep).
WAKE_TOKENS = 64
#: Jobs kept in run order in the queue's LIST (``rq:queue:<name>``), the *window*; the rest wait in
#: one backlog list per priority level (see :mod:`rqplus.priority`). An insert costs O(WINDOW), never
#: O(backlog).
WINDOW = 1000

# Priority order for one queue, shared by every script that puts a job id into a queue.
#   queue   the window: RQ's LIST, at most WINDOW ids in run order (priorities ascend from the head,
#           FIFO among equals), so RQ's dequeue, `rq info` and rq-dashboard read an ordered list
#   wp      hash: id -> priority of each job in the window (no job hash is read to order jobs)
#   wp .. ':levels'  hash: level -> how many of the window's jobs are at that level, so an insert
#           finds its index without searching; rebuilt from wp whenever the counts do not add up
#           to the window's length (stock RQ code popped or pushed, `Queue.remove`)
#   bp      backlog key prefix: list bp .. level holds the rest of level `level`, FIFO
# Invariant: every job in the window runs before every job in the backlog. Stock RQ code that pops
# the window does not refill it; the next rqplus push or pop on the queue does.
_INSERT = """
local WINDOW = """ + str(WINDOW) + """
-- the levels' key suffixes, most urgent first (constants: no number formatting at run time)
local LEVELS = {""" + ", ".join(f"'{level}'" for level in range(MIN_PRIORITY, MAX_PRIORITY + 1)) + """}

local function ring(wake)
  redis.call('RPUSH', wake, '1')
  redis.call('LTRIM', wake, -""" + str(WAKE_TOKENS) + """, -1)
end

-- a forged or corrupted entry counts as the default (and never names a level outside the range)
local function window_priority(wp, id, default)
  local p = tonumber(redis.call('HGET', wp, id))
  if not p or p ~= math.floor(p) or p < """ + str(MIN_PRIORITY) + """ or p > """ + str(MAX_PRIORITY) + """ then
    return default
  end
  return p
end

local function count(wp, level, by)
  redis.call('HINCRBY', wp .. ':levels', level, by)
end

-- how many of the window's n jobs are at each level (a table indexed like LEVELS)
local function level_counts(queue, wp, n, default)
  local raw = redis.call('HMGET', wp .. ':levels', unpack(LEVELS))
  local counts, total = {}, 0
  for k = 1, #LEVELS do
    counts[k] = tonumber(raw[k]) or 0
    total = total + counts[k]
  end
  if total == n then return counts end
  for k = 1, #LEVELS do counts[k] = 0 end
  local ids = redis.call('LRANGE', queue, 0, -1)
  for start = 1, #ids, 500 do
    local chunk = {unpack(ids, start, math.min(start + 499, #ids))}
    local levels = redis.call('HMGET', wp, unpack(chunk))
    for k = 1, #chunk do
      local p = tonumber(levels[k])
      if not p or p ~= math.floor(p) or p < """ + str(MIN_PRIORITY) + """ or p > """ + str(MAX_PRIORITY) + """ then
        p = default
      end
      counts[p - """ + str(MIN_PRIORITY) + """ + 1] = counts[p - """ + str(MIN_PRIORITY) + """ + 1] + 1
    end
  end
  local fields = {}
  for k, level in ipairs(LEVELS) do table.insert(fields, level); table.insert(fields, counts[k]) end
  redis.call('HSET', wp .. ':levels', unpack(fields))
  return counts
end

-- drops entries of ids no longer in the window (popped by stock RQ code), once they pile up
local function tidy(queue, wp)
  if redis.call('HLEN', wp) <= 2 * WINDOW then return end
  local kept = {}
  local ids = redis.call('LRANGE', queue, 0, 4 * WINDOW)
  for start = 1, #ids, 500 do
    local chunk = {unpack(ids, start, math.min(start + 499, #ids))}
    local levels = redis.call('HMGET', wp, unpack(chunk))
    for k, id in ipairs(chunk) do
      if levels[k] then table.insert(kept, id); table.insert(kept, levels[k]) end
    end
  end
  redis.call('DEL', wp, wp .. ':levels')
  for start = 1, #kept, 1000 do redis.call('HSET', wp, unpack(kept, start, math.min(start + 999, #kept))) end
end

-- whether a backlog id still names a queued job: stock RQ's cancel and delete remove ids from the
-- window only, so such ids are dropped here, on their way into the window
local function still_queued(prefix, id)
  local status = redis.pcall('HGET', prefix .. id, 'status')
  if status == false then return redis.call('EXISTS', prefix .. id) == 1 end
  return status ~= 'canceled'  -- a key that is no hash is kept: the worker quarantines it
end

-- moves backlog jobs, most urgent level first, to the window's tail until it holds WINDOW jobs;
-- returns the window's length
local function refill(queue, wp, bp, prefix)
  tidy(queue, wp)
  local n = redis.call('LLEN', queue)
  if n >= WINDOW then return n end
  local levels = {}
  for k, level in ipairs(LEVELS) do levels[k] = bp .. level end
  if redis.call('EXISTS', unpack(levels)) == 0 then return n end
  for k, key in ipairs(levels) do
    local moved = 0
    while n < WINDOW do
      local ids = redis.call('LPOP', key, WINDOW - n)
      if not ids then break end
      for _, id in ipairs(ids) do
        if still_queued(prefix, id) then
          redis.call('RPUSH', queue, id)
          redis.call('HSET', wp, id, LEVELS[k])
          n = n + 1
          moved = moved + 1
        end
      end
    end
    if moved > 0 then count(wp, LEVELS[k], moved) end
    if n >= WINDOW then break end
  end
  return n
end

-- forgets a job id that left the window (its priority entry and its level's count)
local function left_window(wp, id)
  local level = redis.call('HGET', wp, id)
  if level then
    redis.call('HDEL', wp, id)
    count(wp, level, -1)
  end
end

-- puts job_id, of priority p, in its place: into the window if it runs before the window's last
-- job (the window's last job then moves to the front of its backlog level), else into its backlog
-- level. mode "back": after the jobs of equal or more urgent priority; "front" (at_front=True):
-- before the jobs of equal or less urgent priority. n is the window's length, as `refill` (called
-- once before a run of inserts) or the previous insert returned; returns the new length.
local function insert(queue, wp, bp, default, job_id, p, mode, n)
  if n >= WINDOW then
    local last = window_priority(wp, redis.call('LINDEX', queue, -1), default)
    if last < p or (last == p and mode ~= 'front') then  -- runs after the whole window
      if mode == 'front' then redis.call('LPUSH', bp .. p, job_id) else redis.call('RPUSH', bp .. p, job_id) end
      return n
    end
  end
  -- its index: after every job of a more urgent level, and of its own level unless "front"
  local index = 0
  for k, c in ipairs(level_counts(queue, wp, n, default)) do
    local level = k - 1 + """ + str(MIN_PRIORITY) + """
    if level < p or (level == p and mode ~= 'front') then index = index + c end
  end
  if index >= n then
    redis.call('RPUSH', queue, job_id)
  elseif index == 0 then
    redis.call('LPUSH', queue, job_id)
  else
    redis.call('LINSERT', queue, 'BEFORE', redis.call('LINDEX', queue, index), job_id)
  end
  redis.call('HSET', wp, job_id, p)
  count(wp, p, 1)
  if n >= WINDOW then
    local last = redis.call('RPOP', queue)
    redis.call('LPUSH', bp .. window_priority(wp, last, default), last)
    left_window(wp, last)
    return n
  end
  return n + 1
end
"""

# Inserts job ids into one queue at their priorities (see `insert`), ringing its wake-up list once.
# KEYS[1] = the queue list (rq:queue:<name>), KEYS[2] = its wake-up list (see `wake_key`),
# KEYS[3] = its window priorities (see `rqplus.priority.window_key`)
# ARGV[1] = backlog key prefix, ARGV[2] = job hash key prefix (rq:job:),
# ARGV[3] = priority assumed for window ids without a recorded one (pushed by stock RQ code)
# ARGV[4...] = for each job: id, priority, "back" or "front", and "move" to first take the id out of
#              the window (searching from the tail: to re-sort a job stock RQ code pushed), or ""
# Returns how many ids were inserted (a "move" id not found in the window is skipped).
PRIORITY_INSERT = _INSERT + """
local queue, wake, wp, bp, prefix, default = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], tonumber(ARGV[3])
local inserted = 0
local n = refill(queue, wp, bp, prefix)
for i = 4, #ARGV, 4 do
  local job_id = ARGV[i]
  if ARGV[i + 3] ~= 'move' or redis.call('LREM', queue, -1, job_id) == 1 then
    if ARGV[i + 3] == 'move' then
      left_window(wp, job_id)
      n = refill(queue, wp, bp, prefix)
    end
    n = insert(queue, wp, bp, default, job_id, tonumber(ARGV[i + 1]), ARGV[i + 2], n)
    inserted = inserted + 1
  end
end
if inserted > 0 then ring(wake) end
return inserted
"""

# Enqueues a job in one step, so that nothing is written unless all of it is: checks first, then
# RQ's own writes for the job (recorded on a pipeline that is never executed), then the ordered
# insert. Re-sending it after a lost reply (redis-py retries, or rqplus') enqueues nothing twice.
# KEYS[1] = the queue list, KEYS[2] = its wake-up list, KEYS[3] = its window priorities,
# KEYS[4] = the job hash, KEYS[5] = the set of known queues (rq:queues)
# ARGV[1] = backlog key prefix, ARGV[2] = job hash key prefix, ARGV[3] = default priority,
# ARGV[4] = job id, ARGV[5] = its priority, ARGV[6] = "back" or "front"
# ARGV[7] = the job's enqueued_at (RQ stamps it to the microsecond at each enqueue): a job hash
#           already holding it is this very enqueue, re-sent, and nothing is done
# ARGV[8...] = the job's writes: for each, its number of words, then the words (command and arguments)
# Returns 1 when enqueued, 0 for a re-sent enqueue; an error, with nothing written, when the
# queue key is no list or the job key holds something other than a hash.
ENQUEUE = _INSERT + """
local queue, wake, wp, job_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue_type = redis.call('TYPE', queue).ok
if queue_type ~= 'list' and queue_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. queue .. ' holds a ' .. queue_type .. ', not a queue list: nothing enqueued')
end
local job_type = redis.call('TYPE', job_key).ok
if job_type == 'hash' then
  if redis.call('HGET', job_key, 'enqueued_at') == ARGV[7] then return 0 end
elseif job_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. job_key .. ' holds a ' .. job_type .. ', not a job hash: nothing enqueued')
end
-- the insert first: a key of the queue's that Redis refuses (a forged or corrupted one) stops the
-- script before the job hash is written (an id left in the window without its hash is skipped)
insert(queue, wp, ARGV[1], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6], refill(queue, wp, ARGV[1], ARGV[2]))
local i = 8
while i <= #ARGV do
  local words = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + words))
  i = i + words + 1
end
redis.call('SADD', KEYS[5], queue)
ring(wake)
return 1
"""

# Requeues failed jobs of one queue in one step each: a job still in the failed registry is taken
# out of it, gets RQ's own writes for a requeue (recorded on a pipeline that is never executed),
# and is inserted at its priority; a job no longer there (requeued or deleted meanwhile) is skipped.
# KEYS[1] = the queue list, KEYS[2] = its wake-up list, KEYS[3] = its window priorities,
# KEYS[4] = the failed job registry
# ARGV[1] = backlog key prefix, ARGV[2] = job hash key prefix, ARGV[3] = default priority,
# ARGV[4...] = for each job: id, priority, "back" or "front", number of write words, the writes
#              (as in ENQUEUE, flattened)
# Returns how many jobs were requeued.
REQUEUE_FAILED = _INSERT + """
local queue, wake, wp, failed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local requeued, i = 0, 4
local n = refill(queue, wp, ARGV[1], ARGV[2])
while i <= #ARGV do
  local job_id, p, mode, length = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], tonumber(ARGV[i + 3])
  local writes_end = i + 3 + length
  if redis.call('ZSCORE', failed, job_id) and redis.call('EXISTS', ARGV[2] .. job_id) == 1 then
    n = insert(queue, wp, ARGV[1], tonumber(ARGV[3]), job_id, p, mode, n)  -- first: see ENQUEUE
    redis.call('ZREM', failed, job_id)
    local k = i + 4
    while k <= writes_end do
      local words = tonumber(ARGV[k])
      redis.call(unpack(ARGV, k + 1, k + words))
      k = k + words + 1
    end
    requeued = requeued + 1
  end
  i = writes_end + 1
end
if requeued > 0 then ring(wake) end
return requeued
"""

# After a job id left the window by a plain (B)LMOVE: forgets its priority, refills the window.
# KEYS[1] = the queue list, KEYS[2] = its window priorities
# ARGV[1] = job hash key prefix, ARGV[2] = backlog key prefix, ARGV[3] = the id that left
# Returns the window's length.
REFILL = _INSERT + """
left_window(KEYS[2], ARGV[3])
return refill(KEYS[1], KEYS[2], ARGV[2], ARGV[1])
"""

# Appends every backlog id to the window, in run order, and forgets the window's priorities: the
# queue becomes one plain list again (before RQ's `empty` script deletes the jobs of that list).
# KEYS[1] = the queue list, KEYS[2] = its window priorities, KEYS[3...] = its backlog lists, most
# urgent first. Returns how many ids were moved.
MERGE_BACKLOG = """
local moved = 0
for i = 3, #KEYS do
  while true do
    local ids = redis.call('LPOP', KEYS[i], 5000)
    if not ids then break end
    redis.call('RPUSH', KEYS[1], unpack(ids))
    moved = moved + #ids
  end
end
redis.call('DEL', KEYS[2], KEYS[2] .. ':levels')
return moved
"""

# Moves an unreadable job aside: out of the intermediate list, into the failed registry, with the
# reason in the job hash's `exc_info` (where RQ and the dashboard look). A job key holding
# something other than a hash is first renamed aside, kept for inspection, and a hash put there.
# KEYS[1] = the intermediate list, KEYS[2] = the failed registry, KEYS[3] = the job key,
# KEYS[4] = where a job key that is no hash is moved (see `corrupt_key`)
# ARGV[1] = job id, ARGV[2] = failed registry score (expiry time), ARGV[3] = the reason,
# ARGV[4] = the queue's name (the `origin` of a hash put in place of a non-hash)
QUARANTINE = """
redis.call('LREM', KEYS[1], 1, ARGV[1])
local kind = redis.call('TYPE', KEYS[3]).ok
if kind ~= 'hash' and kind ~= 'none' then
  redis.call('RENAME', KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[3], 'origin', ARGV[4])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], 'status', 'failed', 'exc_info', ARGV[3])
return 1
"""

# Reliable multi-queue fetch: moves the head of the first non-empty queue (in the order given)
# to that queue's intermediate list, atomically, so the id is always in some list; then refills
# that queue's window from its backlog (see `refill`). LPOP + RPUSH inside a script is LMOVE on any
# Redis version.
# KEYS[3i-2], KEYS[3i-1], KEYS[3i] = queue i, its intermediate list (rq:queue:<name>:intermediate),
#                                    its window priorities
# ARGV[1] = job hash key prefix, ARGV[1 + i] = queue i's backlog key prefix
# Returns {queue key, job id}, or nil when every queue is empty.
RELIABLE_FETCH = _INSERT + """
for i = 1, #KEYS, 3 do
  local queue, wp, bp = KEYS[i], KEYS[i + 2], ARGV[(i + 2) / 3 + 1]
  local job_id = redis.call('LPOP', queue)
  if not job_id and refill(queue, wp, bp, ARGV[1]) > 0 then job_id = redis.call('LPOP', queue) end
  if job_id then
    redis.call('RPUSH', KEYS[i + 1], job_id)
    left_window(wp, job_id)
    refill(queue, wp, bp, ARGV[1])
    return {queue, job_id}
  end
end
return nil
"""

# Batch fetch for workers that run several jobs at once: up to ARGV[2] ids, from the first queue on
# (as RELIABLE_FETCH, each moved into its queue's intermediate list before the script returns, the
# window refilled), each with its job hash, so a worker starts a batch in one round trip.
# KEYS, ARGV[1] as RELIABLE_FETCH; ARGV[2] = how many at most (the first included), ARGV[3] =
# the index of the queue whose intermediate list already holds the first id (a blocking move
# just took it), or 0; ARGV[4] = that id; ARGV[4 + i] = queue i's backlog prefix.
# Returns a flat list of triples {queue index (1-based), job id, the job hash as HGETALL returns it
# ({} if the key is gone, {'rqplus:not-a-hash', its type} if it holds no hash)}.
FETCH_MANY = _INSERT + """
local want, found, first = tonumber(ARGV[2]), {}, tonumber(ARGV[3])
local function take(index, wp, job_id)
  left_window(wp, job_id)
  local kind, fields = redis.call('TYPE', ARGV[1] .. job_id).ok, {}
  if kind == 'hash' then fields = redis.call('HGETALL', ARGV[1] .. job_id)
  elseif kind ~= 'none' then fields = {'rqplus:not-a-hash', kind} end
  for _, value in ipairs({index, job_id, fields}) do table.insert(found, value) end
end
if first > 0 then
  local i = 3 * first - 2
  take(first, KEYS[i + 2], ARGV[4])
  refill(KEYS[i], KEYS[i + 2], ARGV[4 + first], ARGV[1])
  want = want - 1
end
for i = 1, #KEYS, 3 do
  local queue, wp, bp, index = KEYS[i], KEYS[i + 2], ARGV[(i + 2) / 3 + 4], (i + 2) / 3
  while want > 0 do
    local ids = redis.call('LPOP', queue, want)
    if not ids and refill(queue, wp, bp, ARGV[1]) > 0 then ids = redis.call('LPOP', queue, want) end
    if not ids then break end
    redis.call('RPUSH', KEYS[i + 1], unpack(ids))
    for _, job_id in ipairs(ids) do take(index, wp, job_id) end
    want = want - #ids
    refill(queue, wp, bp, ARGV[1])
  end
end
return found
"""

# The starts of a batch of fetched jobs, as RQ records one (`Execution.create`,
# `Job.prepare_for_execution`, `prepare_job_execution`) for each, in one script.
# ARGV[1..9] = now (float seconds), now as RQ's date text, worker name, TTL (s), the worker's
#   execution index ("" on rq 2.12: none), execution key prefix, execution registry key prefix,
#   whether the execution hash holds job_id ("1": rq 3.x), the number of queues Q;
# then Q pairs (started registry, intermediate list); then per job: job id, job key, queue index
# (1-based), execution id.
START_MANY = """
local now, text, worker, ttl, index = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local expires = math.floor(now) + ttl
local q = tonumber(ARGV[9])
for i = 10 + 2 * q, #ARGV, 4 do
  local job_id, job_key, queue, execution_id = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local started, intermediate = ARGV[8 + 2 * queue], ARGV[9 + 2 * queue]
  local composite = job_id .. ':' .. execution_id
  local execution = ARGV[6] .. composite
  redis.call('HSET', execution, 'id', execution_id, 'created_at', ARGV[1], 'last_heartbeat', ARGV[1],
             'worker_name', worker)
  if ARGV[8] == '1' then redis.call('HSET', execution, 'job_id', job_id) end
  redis.call('EXPIRE', execution, ttl)
  redis.call('ZADD', ARGV[7] .. job_id, expires + 60, execution_id)
  redis.call('EXPIRE', ARGV[7] .. job_id, ttl + 60)
  redis.call('ZADD', started, expires, composite)
  if index ~= '' then
    redis.call('SADD', index, composite)
    redis.call('EXPIRE', index, ttl + 60)
  end
  redis.call('HSET', job_key, 'last_heartbeat', text, 'status', 'started', 'started_at', text, 'worker_name', worker)
  redis.call('PERSIST', job_key)
  redis.call('LREM', intermediate, 1, job_id)
end
return 1
"""

# The ends of a batch of jobs that succeeded, as RQ's `handle_execution_ended` and
# `handle_job_success` record one with no dependents (Result.create, the finished registry,
# Job.cleanup, Execution.delete, the worker's counters), in one script. A job that has dependents
# is left alone (RQ's own steps enqueue them): its position in the batch is returned.
# ARGV[1..7] = now (integer seconds), now as RQ's date text, worker name, worker key, the
#   worker's execution index ("" on rq 2.12), execution key prefix, execution registry key prefix;
# then per job: job id, job key, dependents key, dependencies key, results key, finished
#   registry, started registry, execution id, execution start (float seconds, as text), end (the
#   same), result TTL (-1: forever), the result's base64 text ("": None), the end as RQ's date
#   text, the job's working time (s).
FINISH_MANY = """
local now, text, worker, index = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[5]
local left, done, working = {}, 0, 0
for i = 8, #ARGV, 14 do
  local job_id, job_key, dependents, dependencies = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local results, finished, started, execution_id = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  local ttl, value = tonumber(ARGV[i + 10]), ARGV[i + 11]
  if redis.call('EXISTS', dependents) == 1 then
    table.insert(left, (i - 8) / 14 + 1)
  else
    redis.call('HSET', job_key, 'last_heartbeat', text, 'status', 'finished', 'ended_at', ARGV[i + 12])
    local fields = {'type', '1', 'worker_name', worker}
    if value ~= '' then table.insert(fields, 'return_value'); table.insert(fields, value) end
    for _, field in ipairs({'execution_id', execution_id, 'execution_started_at', ARGV[i + 8],
                            'execution_ended_at', ARGV[i + 9]}) do table.insert(fields, field) end
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
    redis.call('DEL', ARGV[6] .. composite)
    redis.call('ZREM', started, composite)
    redis.call('ZREM', ARGV[7] .. job_id, execution_id)
    if index ~= '' then redis.call('SREM', index, composite) end
    done = done + 1
    working = working + tonumber(ARGV[i + 13])
  end
end
if done > 0 then
  redis.call('HINCRBY', ARGV[4], 'successful_job_count', done)
  redis.call('HINCRBYFLOAT', ARGV[4], 'total_working_time', string.format('%.6f', working))
end
return left
"""

# Finds jobs that no live worker holds, for `rqplus.recovery`. Read only.
# KEYS[2i-1], KEYS[2i] = started registry (rq:wip:<name>) and intermediate list of queue i
# ARGV[1] = execution hash key prefix (rq:execution:); an entry's worker is the execution's
#           `worker_name`, written with the registry entry (the job hash gets it only later)
# ARGV[2] = rqplus worker key prefix (rqplus:worker:)
# Returns a flat list of quadruples {queue index (1-based), started-registry entry or "", job id, worker}:
#  - entries whose rqplus worker (marker key present) stopped heartbeating (alive key gone);
#  - ids in an intermediate list with no entry in that queue's started registry (worker "").
FIND_ABANDONED = """
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
"""

# Puts an abandoned job back in its queue at its priority, atomically (see `rqplus.recovery`).
# KEYS[1] = the queue list, KEYS[2] = its wake-up list
# KEYS[3] = where the id is held: the started registry (zset) or the intermediate list
# KEYS[4] = the failed job registry (rq:failed:<name>)
# KEYS[5] = the intermediate list: a started job's id can linger there when its worker died
#           between starting it and clearing it, and must not come back a second time
# KEYS[6] = the queue's window priorities
# ARGV[1] = job id, ARGV[2] = job hash key prefix, ARGV[3] = default priority
# ARGV[4] = the started-registry entry, or "" for an id held in the intermediate list
# ARGV[5] = rqplus worker key prefix, ARGV[6] = that worker's name ("" for intermediate ids, and for
#           a worker handing back its own job: no liveness check)
# ARGV[7] = most rescues before the job fails, ARGV[8] = failed registry score (expiry time)
# ARGV[9] = the queue's backlog key prefix, ARGV[10] = the job's priority
# Returns: n >= 1 requeued (n = rescues so far; 0 for an intermediate id, not counted),
#          -1 failed after too many rescues (the caller records why),
#          -2 nothing done: the worker is alive again, the id is gone (someone else rescued it),
#             or the job hash no longer exists (the id is dropped).
RESCUE = _INSERT + """
local queue, wake, held, failed, intermediate = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job_id, prefix, default, entry = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local job_key = prefix .. job_id
if entry ~= '' then
  if ARGV[6] ~= '' and redis.call('EXISTS', ARGV[5] .. ARGV[6] .. ':alive') == 1 then return -2 end
  if redis.call('ZREM', held, entry) == 0 then return -2 end
  redis.call('LREM', intermediate, 0, job_id)
else
  if redis.call('LREM', held, 1, job_id) == 0 then return -2 end
end
if redis.call('EXISTS', job_key) == 0 then return -2 end
local rescues = 0
if entry ~= '' then
  rescues = redis.call('HINCRBY', job_key, 'rescues', 1)
  if rescues > tonumber(ARGV[7]) then
    redis.call('HSET', job_key, 'status', 'failed')
    redis.call('ZADD', failed, ARGV[8], job_id)
    return -1
  end
end
redis.call('HSET', job_key, 'status', 'queued')
insert(queue, KEYS[6], ARGV[9], default, job_id, tonumber(ARGV[10]), 'back', refill(queue, KEYS[6], ARGV[9], prefix))
ring(wake)
return rescues
"""


@cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def run(connection: Redis | Pipeline, script: str, numkeys: int, *keys_and_args: Any) -> Any:
    """Run ``script`` (one of this module's constants): EVALSHA, or EVAL when Redis lacks it; EVAL
    on a pipeline (see the module's docstring). Returns the script's reply, or the pipeline.

    Usage: ``run(redis, MERGE_BACKLOG, len(keys), *keys)``
    """
    if isinstance(connection, Pipeline):
        return connection.eval(script, numkeys, *keys_and_args)
    try:
        return connection.evalsha(_sha(script), numkeys, *keys_and_args)
    except NoScriptError:
        return connection.eval(script, numkeys, *keys_and_args)


def corrupt_key(job_id: str) -> str:
    """Where a job key that holds no hash is kept when its job is quarantined."""
    return f"rqplus:corrupt:{job_id}"


def wake_key(queue_name: str) -> str:
    """The wake-up list of a queue: one token per push, for workers blocked on several queues."""
    return f"rqplus:wake:{queue_name}"


def priority_insert(connection: Redis | Pipeline, keys: tuple[str, str, str], backlog_prefix: str,
                    job_key_prefix: str, default_priority: int,
                    jobs: Iterable[tuple[str, int, bool, bool]]) -> int | Pipeline:
    """Insert job ids into one queue at their priorities (see ``PRIORITY_INSERT``); returns how many.

    ``keys`` are (queue, wake-up list, window priorities); ``jobs`` yields (id, priority, at_front,
    move) where ``move`` first takes the id out of the window (skipped when it is not there).
    On a pipeline the command is queued and the pipeline is returned, as redis-py does.

    Usage: ``priority_insert(redis, keys, "rqplus:backlog:emails:", "rq:job:", 5, [(job.id, 0, False, False)])``
    """
    words = [word for job_id, priority, at_front, move in jobs
             for word in (job_id, priority, "front" if at_front else "back", "move" if move else "")]
    return run(connection, PRIORITY_INSERT, 3, *keys, backlog_prefix, job_key_prefix, default_priority, *words)


def enqueue(connection: Redis, keys: tuple[str, str, str, str, str], backlog_prefix: str, job_key_prefix: str,
            default_priority: int, job_id: str, priority: int, at_front: bool, enqueued_at: str, writes: list) -> int:
    """Run ``ENQUEUE``: ``keys`` are (queue, wake-up list, window priorities, job hash, rq:queues);
    ``writes`` the job's commands, flattened as ``[word count, *words, ...]``. 1 enqueued, 0 already
    enqueued (re-sent).

    Usage: ``enqueue(redis, keys, "rqplus:backlog:emails:", "rq:job:", 5, job.id, 0, False, stamp, writes)``
    """
    return run(connection, ENQUEUE, len(keys), *keys, backlog_prefix, job_key_prefix, default_priority, job_id,
                           priority, "front" if at_front else "back", enqueued_at, *writes)


def requeue_failed(connection: Redis, keys: tuple[str, str, str, str], backlog_prefix: str, job_key_prefix: str,
                   default_priority: int, jobs: Iterable[tuple[str, int, bool, list]]) -> int:
    """Run ``REQUEUE_FAILED``: ``keys`` are (queue, wake-up list, window priorities, failed registry);
    ``jobs`` yields (id, priority, at_front, writes flattened as in :func:`enqueue`). Returns how many
    were requeued.

    Usage: ``requeue_failed(redis, keys, "rqplus:backlog:emails:", "rq:job:", 5, [(job.id, 3, False, writes)])``
    """
    words = [word for job_id, priority, at_front, writes in jobs
             for word in (job_id, priority, "front" if at_front else "back", len(writes), *writes)]
    return run(connection, REQUEUE_FAILED, len(keys), *keys, backlog_prefix, job_key_prefix, default_priority,
                           *words)


def quarantine(connection: Redis, keys: tuple[str, str, str], job_id: str, score: int, reason: str,
               queue_name: str) -> None:
    """Run ``QUARANTINE``: ``keys`` are (intermediate list, failed registry, job key).

    Usage: ``quarantine(redis, keys, job_id, expiry, "field 'data' is missing", "emails")``
    """
    run(connection, QUARANTINE, 4, *keys, corrupt_key(job_id), job_id, score, reason, queue_name)


def fetch_many(connection: Redis, queues: Sequence[tuple[str, str, str, str]], job_key_prefix: str,
               count: int, first: tuple[int, str] | None = None) -> list[tuple[int, str, dict[bytes, bytes]]]:
    """Move up to ``count`` ids, most urgent first, into their intermediate lists (see ``FETCH_MANY``);
    ``queues`` as for :func:`reliable_fetch`; ``first``: (queue index, id) of an id a blocking move
    has just put in that queue's intermediate list, returned first. Returns (queue index, job id,
    job hash) each.

    Usage: ``fetch_many(redis, [("rq:queue:a", "rq:queue:a:intermediate", window_key("a"), backlog_prefix("a"))], "rq:job:", 8)``
    """
    keys = [key for queue, intermediate, window, _ in queues for key in (queue, intermediate, window)]
    index, job_id = (first[0] + 1, first[1]) if first else (0, "")
    found = run(connection, FETCH_MANY, len(keys), *keys, job_key_prefix, count, index, job_id,
                *(backlog for *_, backlog in queues))
    return [(int(index) - 1, as_text(job_id), dict(zip(fields[0::2], fields[1::2])))
            for index, job_id, fields in zip(found[0::3], found[1::3], found[2::3])]


def reliable_fetch(connection: Redis, queues: Sequence[tuple[str, str, str, str]],
                   job_key_prefix: str) -> tuple[bytes, bytes] | None:
    """Move the head of the first non-empty queue into its intermediate list (see ``RELIABLE_FETCH``).
    ``queues`` are (queue key, intermediate list, window priorities, backlog key prefix) each.

    Usage: ``reliable_fetch(redis, [("rq:queue:a", "rq:queue:a:intermediate", window_key("a"), backlog_prefix("a"))], "rq:job:")``
    """
    keys = [key for queue, intermediate, window, _ in queues for key in (queue, intermediate, window)]
    result = run(connection, RELIABLE_FETCH, len(keys), *keys, job_key_prefix, *(backlog for *_, backlog in queues))
    return (result[0], result[1]) if result else None
