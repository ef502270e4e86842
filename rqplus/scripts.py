"""Lua scripts run by rqplus, each a module constant documented with its KEYS and ARGV.

Scripts are sent with EVAL, not EVALSHA: Redis caches the compiled script by its SHA all the same,
and EVAL can never fail with NOSCRIPT inside an enqueue's MULTI/EXEC (which would save the job hash
but not queue it, e.g. right after a Redis restart flushed the script cache).

Every script that puts a job id into a queue shares ``_INSERT``, so priority order is kept in one
place, and rings the queue's wake-up list so that multi-queue workers blocked on it wake at once.
"""

from __future__ import annotations

from redis import Redis
from redis.client import Pipeline

#: Tokens kept at most in a queue's wake-up list (one per push; extra tokens only cost a sweep).
WAKE_TOKENS = 64
#: An insert this close to the tail moves the tail jobs instead of walking the list from the head.
TAIL_SHIFT = 128

# Keeps an RQ queue LIST in run order: priorities ascend from head (LPOP/LMOVE end) to tail,
# FIFO among equal priorities. Binary search with LINDEX finds the slot, so the cost is
# O(log n) probes plus LINSERT's walk from the head to the slot (or, for a slot at most
# TAIL_SHIFT jobs from the tail, popping and re-pushing those); the common case (the new job is
# the least urgent present) is a plain RPUSH after one probe of the tail.
# A job's priority is the field `priority` of its hash (prefix .. id); `default` where absent, and
# where the key is no hash (a corrupt entry must not stop every enqueue: workers quarantine it).
_INSERT = """
local function priority(prefix, default, id)
  local value = redis.pcall('HGET', prefix .. id, 'priority')
  if type(value) == 'table' then return default end
  return tonumber(value) or default
end

-- mode "back": after the last job of equal or more urgent priority;
-- mode "front": before the first job of equal or less urgent priority.
local function insert(queue, wake, job_id, prefix, default, mode)
  local p = priority(prefix, default, job_id)
  local n = redis.call('LLEN', queue)
  local runs_after
  if mode == 'front' then
    runs_after = function(q) return q >= p end
  else
    runs_after = function(q) return q > p end
  end
  local lo, hi = 0, n
  if mode ~= 'front' and (n == 0 or not runs_after(priority(prefix, default, redis.call('LINDEX', queue, -1)))) then
    lo = n
  end
  while lo < hi do  -- first index whose job runs after the new one (n when there is none)
    local mid = math.floor((lo + hi) / 2)
    if runs_after(priority(prefix, default, redis.call('LINDEX', queue, mid))) then hi = mid else lo = mid + 1 end
  end
  local length
  if lo == n then
    length = redis.call('RPUSH', queue, job_id)
  elseif lo == 0 then
    length = redis.call('LPUSH', queue, job_id)
  elseif n - lo <= """ + str(TAIL_SHIFT) + """ then
    -- LINSERT finds its pivot walking from the head; near the tail, lift the tail off instead
    local tail = {}
    for k = 1, n - lo do tail[k] = redis.call('RPOP', queue) end
    redis.call('RPUSH', queue, job_id)
    for k = #tail, 1, -1 do length = redis.call('RPUSH', queue, tail[k]) end
  else
    length = redis.call('LINSERT', queue, 'BEFORE', redis.call('LINDEX', queue, lo), job_id)
  end
  redis.call('RPUSH', wake, '1')
  redis.call('LTRIM', wake, -""" + str(WAKE_TOKENS) + """, -1)
  return length
end
"""

# KEYS[1] = the queue list (rq:queue:<name>)
# KEYS[2] = the queue's wake-up list (see `wake_key`)
# ARGV[1] = job id
# ARGV[2] = job hash key prefix (rq:job:)
# ARGV[3] = priority assumed for jobs whose hash has no `priority` (enqueued by stock RQ)
# ARGV[4] = "back" (normal enqueue) or "front" (at_front=True), see `insert`
# ARGV[5] = "move": first take the id out of the list (searching from the tail), to re-sort a job
#           that stock RQ code pushed at an end; "" for a plain insert
# ARGV[6] = priority to record in the job hash first (for hashes saved without it); "" to keep
# Returns the list length after the insert, or -1 for "move" when the id was not in the list.
PRIORITY_INSERT = _INSERT + """
local queue, wake, job_id, prefix, default = KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3])
if ARGV[5] == 'move' and redis.call('LREM', queue, -1, job_id) == 0 then return -1 end
if ARGV[6] ~= '' then redis.call('HSET', prefix .. job_id, 'priority', ARGV[6]) end
return insert(queue, wake, job_id, prefix, default, ARGV[4])
"""

# Enqueues a job in one step, so that nothing is written unless all of it is: checks first, then
# RQ's own writes for the job (recorded on a pipeline that is never executed), then the ordered
# insert. Re-sending it after a lost reply (redis-py retries, or rqplus') enqueues nothing twice.
# KEYS[1] = the queue list, KEYS[2] = its wake-up list, KEYS[3] = the job hash,
# KEYS[4] = the set of known queues (rq:queues)
# ARGV[1] = job id, ARGV[2] = job hash key prefix, ARGV[3] = default priority, ARGV[4] = "back" or "front"
# ARGV[5] = the job's enqueued_at (RQ stamps it to the microsecond at each enqueue): a job hash
#           already holding it is this very enqueue, re-sent, and nothing is done
# ARGV[6...] = the job's writes: for each, its number of words, then the words (command and arguments)
# Returns 1 when enqueued, 0 for a re-sent enqueue; an error, with nothing written, when the
# queue key is no list or the job key holds something other than a hash.
ENQUEUE = _INSERT + """
local queue, wake, job_key = KEYS[1], KEYS[2], KEYS[3]
local queue_type = redis.call('TYPE', queue).ok
if queue_type ~= 'list' and queue_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. queue .. ' holds a ' .. queue_type .. ', not a queue list: nothing enqueued')
end
local job_type = redis.call('TYPE', job_key).ok
if job_type == 'hash' then
  if redis.call('HGET', job_key, 'enqueued_at') == ARGV[5] then return 0 end
elseif job_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. job_key .. ' holds a ' .. job_type .. ', not a job hash: nothing enqueued')
end
local i = 6
while i <= #ARGV do
  local words = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + words))
  i = i + words + 1
end
redis.call('SADD', KEYS[4], queue)
insert(queue, wake, ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4])
return 1
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
# to that queue's intermediate list, atomically, so the id is always in some list. LPOP + RPUSH
# inside a script is LMOVE on any Redis version.
# KEYS[2i-1], KEYS[2i] = queue i and its intermediate list (rq:queue:<name>:intermediate)
# Returns {queue key, job id}, or nil when every queue is empty.
RELIABLE_FETCH = """
for i = 1, #KEYS, 2 do
  local job_id = redis.call('LPOP', KEYS[i])
  if job_id then
    redis.call('RPUSH', KEYS[i + 1], job_id)
    return {KEYS[i], job_id}
  end
end
return nil
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
# ARGV[1] = job id, ARGV[2] = job hash key prefix, ARGV[3] = default priority
# ARGV[4] = the started-registry entry, or "" for an id held in the intermediate list
# ARGV[5] = rqplus worker key prefix, ARGV[6] = that worker's name ("" for intermediate ids, and for
#           a worker handing back its own job: no liveness check)
# ARGV[7] = most rescues before the job fails, ARGV[8] = failed registry score (expiry time)
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
insert(queue, wake, job_id, prefix, default, 'back')
return rescues
"""


def corrupt_key(job_id: str) -> str:
    """Where a job key that holds no hash is kept when its job is quarantined."""
    return f"rqplus:corrupt:{job_id}"


def wake_key(queue_name: str) -> str:
    """The wake-up list of a queue: one token per push, for workers blocked on several queues."""
    return f"rqplus:wake:{queue_name}"


def priority_insert(
    connection: Redis | Pipeline,
    queue_key: str,
    wake: str,
    job_id: str,
    job_key_prefix: str,
    default_priority: int,
    at_front: bool = False,
    move: bool = False,
    record_priority: int | None = None,
) -> int | Pipeline:
    """Insert ``job_id`` into ``queue_key`` at its priority's place (see ``PRIORITY_INSERT``).

    With ``move=True`` the id is first taken out of the list; -1 means it was not there.
    ``record_priority`` is first written to the job hash, for hashes saved without it.
    On a pipeline the command is queued and the pipeline is returned, as redis-py does.

    Usage: ``priority_insert(redis, "rq:queue:emails", wake_key("emails"), job.id, "rq:job:", 5)``
    """
    return connection.eval(
        PRIORITY_INSERT,
        2,
        queue_key,
        wake,
        job_id,
        job_key_prefix,
        default_priority,
        "front" if at_front else "back",
        "move" if move else "",
        "" if record_priority is None else record_priority,
    )


def enqueue(connection: Redis, keys: tuple[str, str, str, str], job_id: str, job_key_prefix: str,
            default_priority: int, at_front: bool, enqueued_at: str, writes: list) -> int:
    """Run ``ENQUEUE``: ``keys`` are (queue, wake-up list, job hash, rq:queues); ``writes`` the job's
    commands, flattened as ``[word count, *words, ...]``. 1 enqueued, 0 already enqueued (re-sent).

    Usage: ``enqueue(redis, keys, job.id, "rq:job:", 5, False, "2030-01-01T00:00:00.000000Z", writes)``
    """
    return connection.eval(ENQUEUE, len(keys), *keys, job_id, job_key_prefix, default_priority,
                           "front" if at_front else "back", enqueued_at, *writes)


def quarantine(connection: Redis, keys: tuple[str, str, str], job_id: str, score: int, reason: str,
               queue_name: str) -> None:
    """Run ``QUARANTINE``: ``keys`` are (intermediate list, failed registry, job key).

    Usage: ``quarantine(redis, keys, job_id, expiry, "field 'data' is missing", "emails")``
    """
    connection.eval(QUARANTINE, 4, *keys, corrupt_key(job_id), job_id, score, reason, queue_name)


def reliable_fetch(connection: Redis, queue_keys: list[str], intermediate_keys: list[str]) -> tuple[bytes, bytes] | None:
    """Move the head of the first non-empty queue into its intermediate list (see ``RELIABLE_FETCH``).

    Usage: ``reliable_fetch(redis, ["rq:queue:a", "rq:queue:b"], ["rq:queue:a:intermediate", ...])``
    """
    keys = [key for pair in zip(queue_keys, intermediate_keys) for key in pair]
    result = connection.eval(RELIABLE_FETCH, len(keys), *keys)
    return (result[0], result[1]) if result else None
