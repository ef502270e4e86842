"""rqplus's Lua, called from Python: one typed wrapper per function of rqplus's Redis function
library (the Lua is in ``rqplus/lua/``, one file per function, documented there with its KEYS and
ARGV; :mod:`rqplus.functions` loads and calls it).

Every function that puts a job id into a queue shares ``insert`` (``helpers.lua``), so priority
order is kept in one place, and rings the queue's wake-up list so that multi-queue workers blocked
on it wake at once. No call takes more than ``MAX_BATCH`` jobs (the Lua refuses more), so none holds
Redis for long.

Usage::

    from rqplus.scripts import queue_keys, priority_insert
    priority_insert(redis, queue_keys("emails"), "rq:job:", 5, [(job.id, 0, False, False)])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from redis import Redis
from redis.client import Pipeline
from rq.utils import as_text

from rqplus.functions import rqplus_library
from rqplus.lua import constant
from rqplus.priority import backlog_prefix, window_counts_key, window_key

#: Jobs kept in run order in the queue's LIST (``rq:queue:<name>``), the *window*; the rest wait in
#: one backlog list per priority level (see :mod:`rqplus.priority`). Defined in ``helpers.lua``.
WINDOW = constant("WINDOW")
#: Tokens kept at most in a queue's wake-up list (one per push). Defined in ``helpers.lua``.
WAKE_TOKENS = constant("WAKE_TOKENS")
#: Most jobs one function call takes (inserts, enqueues, requeues, starts, ends, fetches): callers
#: split larger batches. Defined in ``helpers.lua``.
MAX_BATCH = constant("MAX_BATCH")
T = TypeVar("T")


class QueueKeys(NamedTuple):
    """The keys of one queue's ordered storage: RQ's list, its wake-up list, the window's priorities
    and counts, and the prefix of its backlog lists (see :mod:`rqplus.priority`)."""

    list: str
    wake: str
    window: str
    counts: str
    backlog: str


def queue_keys(name: str, list_key: str | None = None) -> QueueKeys:
    """The keys of queue ``name`` (its list ``rq:queue:<name>`` unless ``list_key`` says otherwise).

    Usage: ``queue_keys("emails").window == "rqplus:window:emails"``
    """
    return QueueKeys(list_key or f"rq:queue:{name}", wake_key(name), window_key(name), window_counts_key(name),
                     backlog_prefix(name))


def call(connection: Redis | Pipeline, function: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run ``function`` of rqplus's library (see :meth:`rqplus.functions.Library.call`).

    Usage: ``call(redis, "refill", keys, args)``
    """
    return rqplus_library().call(connection, function, keys, args)


def corrupt_key(job_id: str) -> str:
    """Where a job key that holds no hash is kept when its job is quarantined."""
    return f"rqplus:corrupt:{job_id}"


def wake_key(queue_name: str) -> str:
    """The wake-up list of a queue: one token per push, for workers blocked on several queues."""
    return f"rqplus:wake:{queue_name}"


def _mode(at_front: bool) -> str:
    return "front" if at_front else "back"


def _in_batches(connection: Redis | Pipeline, jobs: Sequence[T], run: Callable[[Sequence[T]], Any]) -> Any:
    """``run`` on ``MAX_BATCH`` jobs at a time: the sum of its replies, or the pipeline."""
    replies = [run(jobs[start:start + MAX_BATCH]) for start in range(0, max(len(jobs), 1), MAX_BATCH)]
    return connection if isinstance(connection, Pipeline) else sum(replies)


def priority_insert(connection: Redis | Pipeline, keys: QueueKeys, job_key_prefix: str, default_priority: int,
                    jobs: Iterable[tuple[str, int, bool, bool]]) -> int | Pipeline:
    """Insert job ids into one queue at their priorities (``priority_insert.lua``, one call per
    ``MAX_BATCH`` ids); returns how many.

    ``jobs`` yields (id, priority, at_front, move) where ``move`` first takes the id out of the
    window (skipped when it is not there). On a pipeline the calls are queued and the pipeline is
    returned, as redis-py does.

    Usage: ``priority_insert(redis, queue_keys("emails"), "rq:job:", 5, [(job.id, 0, False, False)])``
    """
    def run(batch: Sequence[tuple[str, int, bool, bool]]) -> Any:
        words = [word for job_id, priority, at_front, move in batch
                 for word in (job_id, priority, _mode(at_front), "move" if move else "")]
        return call(connection, "priority_insert", keys[:4], [keys.backlog, job_key_prefix, default_priority, *words])

    return _in_batches(connection, list(jobs), run)


class Enqueued(NamedTuple):
    """One job for :func:`enqueue`: its hash key and id, priority, at_front, RQ's ``enqueued_at``
    stamp, and RQ's writes for it flattened as ``[word count, *words, ...]``."""

    key: str
    id: str
    priority: int
    at_front: bool
    enqueued_at: str
    writes: list


def enqueue(connection: Redis | Pipeline, keys: QueueKeys, queues_key: str, job_key_prefix: str,
            default_priority: int, jobs: Sequence[Enqueued]) -> int | Pipeline:
    """Enqueue ``jobs`` into one queue (``enqueue.lua``, one call per ``MAX_BATCH`` jobs): each job's
    writes and its ordered insert at once, a job whose hash already holds its ``enqueued_at`` skipped
    (a re-sent call). Returns how many were enqueued (the pipeline, on one).

    Usage: ``enqueue(redis, keys, "rq:queues", "rq:job:", 5, [Enqueued(job.key, job.id, 0, False, stamp, writes)])``
    """
    def run(batch: Sequence[Enqueued]) -> Any:
        words = [word for job in batch
                 for word in (job.id, job.priority, _mode(job.at_front), job.enqueued_at, len(job.writes), *job.writes)]
        return call(connection, "enqueue", [*keys[:4], queues_key, *(job.key for job in batch)],
                    [keys.backlog, job_key_prefix, default_priority, *words])

    return _in_batches(connection, jobs, run)


def requeue_failed(connection: Redis, keys: QueueKeys, failed_key: str, job_key_prefix: str, default_priority: int,
                   jobs: Sequence[tuple[str, str, int, bool, list]]) -> int:
    """Requeue failed jobs of one queue (``requeue_failed.lua``); ``jobs`` are (job key, id,
    priority, at_front, writes flattened as in :class:`Enqueued`). Returns how many were requeued.

    Usage: ``requeue_failed(redis, queue_keys("emails"), "rq:failed:emails", "rq:job:", 5, [(job.key, job.id, 3, False, writes)])``
    """
    words = [word for _, job_id, priority, at_front, writes in jobs
             for word in (job_id, priority, _mode(at_front), len(writes), *writes)]
    return call(connection, "requeue_failed", [*keys[:4], failed_key, *(key for key, *_ in jobs)],
                [keys.backlog, job_key_prefix, default_priority, *words])


def refill(connection: Redis, keys: QueueKeys, job_key_prefix: str, job_id: str) -> int:
    """After ``job_id`` left the queue's list by a plain (B)LMOVE: forget its priority, refill the
    list from the backlog (``refill.lua``); returns the list's length.

    Usage: ``refill(redis, queue_keys("emails"), "rq:job:", job_id)``
    """
    return call(connection, "refill", [keys.list, keys.window, keys.counts], [keys.backlog, job_key_prefix, job_id])


def merge_backlog(connection: Redis, keys: QueueKeys, backlog_keys: Sequence[str]) -> int:
    """Append the backlog to the queue's list, in run order (``merge_backlog.lua``); returns how many moved.

    Usage: ``merge_backlog(redis, queue_keys("emails"), queue.backlog_keys)``
    """
    return call(connection, "merge_backlog", [keys.list, keys.window, keys.counts, *backlog_keys], [])


def quarantine(connection: Redis, keys: tuple[str, str, str], job_id: str, score: int, reason: str,
               queue_name: str) -> None:
    """Move an unreadable job aside (``quarantine.lua``): ``keys`` are (intermediate list, failed
    registry, job key).

    Usage: ``quarantine(redis, keys, job_id, expiry, "field 'data' is missing", "emails")``
    """
    call(connection, "quarantine", [*keys, corrupt_key(job_id)], [job_id, score, reason, queue_name])


class FetchKeys(NamedTuple):
    """One queue as a fetch sees it: its list, its intermediate list, and its ordered storage's keys."""

    list: str
    intermediate: str
    window: str
    counts: str
    backlog: str


def fetch_keys(name: str, list_key: str, intermediate_key: str) -> FetchKeys:
    """The keys a fetch from queue ``name`` uses.

    Usage: ``fetch_keys("a", "rq:queue:a", "rq:queue:a:intermediate")``
    """
    return FetchKeys(list_key, intermediate_key, window_key(name), window_counts_key(name), backlog_prefix(name))


def _fetch_keys(queues: Sequence[FetchKeys]) -> list[str]:
    return [key for queue in queues for key in queue[:4]]


def fetch_many(connection: Redis, queues: Sequence[FetchKeys], job_key_prefix: str,
               count: int, first: tuple[int, str] | None = None) -> list[tuple[int, str, dict[bytes, bytes]]]:
    """Move up to ``count`` ids (``MAX_BATCH`` at most), most urgent first, into their intermediate
    lists (``fetch_many.lua``); ``first``: (queue index, id) of an id a blocking move has just put
    in that queue's intermediate list, returned first. Returns (queue index, job id, job hash) each.

    Usage: ``fetch_many(redis, [fetch_keys("a", "rq:queue:a", "rq:queue:a:intermediate")], "rq:job:", 8)``
    """
    index, job_id = (first[0] + 1, first[1]) if first else (0, "")
    found = call(connection, "fetch_many", _fetch_keys(queues),
                 [job_key_prefix, min(count, MAX_BATCH), index, job_id, *(queue.backlog for queue in queues)])
    return [(int(index) - 1, as_text(job_id), dict(zip(fields[0::2], fields[1::2])))
            for index, job_id, fields in zip(found[0::3], found[1::3], found[2::3])]


def reliable_fetch(connection: Redis, queues: Sequence[FetchKeys], job_key_prefix: str) -> tuple[bytes, bytes] | None:
    """Move the head of the first non-empty queue into its intermediate list (``reliable_fetch.lua``):
    (queue key, job id), or None when every queue is empty.

    Usage: ``reliable_fetch(redis, [fetch_keys("a", "rq:queue:a", "rq:queue:a:intermediate")], "rq:job:")``
    """
    result = call(connection, "reliable_fetch", _fetch_keys(queues),
                  [job_key_prefix, *(queue.backlog for queue in queues)])
    return (result[0], result[1]) if result else None


class Start(NamedTuple):
    """One job for :func:`start_many`: its id and hash key, its queue's index in ``queues``, its
    execution's id, hash key and per-job registry key (RQ's names)."""

    job_id: str
    job_key: str
    queue: int
    execution_id: str
    execution_key: str
    registry_key: str


def start_many(pipeline: Redis | Pipeline, stamp: float, stamp_text: str, worker: str, ttl: int,
               execution_index: str, holds_job_id: bool, queues: Sequence[tuple[str, str]],
               jobs: Sequence[Start]) -> Any:
    """Record the starts of ``jobs`` as RQ does (``start_many.lua``); ``queues`` are (started
    registry, intermediate list) each; ``execution_index`` is rq 3.x's set of the worker's executions
    ("" on rq 2.12).

    Usage: ``start_many(pipe, now.timestamp(), utcformat(now), worker.name, ttl, "", False, queues, starts)``
    """
    index = [execution_index] if execution_index else []
    keys = [*index, *(key for pair in queues for key in pair),
            *(key for job in jobs for key in (job.job_key, job.execution_key, job.registry_key))]
    words = [word for job in jobs for word in (job.job_id, job.queue + 1, job.execution_id)]
    return call(pipeline, "start_many", keys, [repr(stamp), stamp_text, worker, ttl, int(holds_job_id), len(queues),
                                               int(bool(index)), *words])


class Finish(NamedTuple):
    """One successful job for :func:`finish_many`: its keys (RQ's names), its execution, its result."""

    job_id: str
    keys: tuple[str, str, str, str, str, str, str, str]  # job, dependents, dependencies, results, finished,
    #                                                        started, execution hash, execution registry
    execution_id: str
    started: str  # execution start, float seconds as text
    ended: str  # the same for the end
    result_ttl: int
    result: str  # the result's base64 text, "" for None
    ended_text: str  # the end as RQ's date text
    working: str  # working time, seconds as text


def finish_many(connection: Redis, now: int, now_text: str, worker: str, worker_key: str, execution_index: str,
                jobs: Sequence[Finish]) -> list[int]:
    """Record the successes of ``jobs`` as RQ does (``finish_many.lua``); returns the positions
    (0-based) of the jobs left alone because they have dependents.

    Usage: ``left = finish_many(redis, now, utcformat(stamp), worker.name, worker.key, "", finishes)``
    """
    index = [execution_index] if execution_index else []
    keys = [worker_key, *index, *(key for job in jobs for key in job.keys)]
    words = [word for job in jobs for word in (job.job_id, job.execution_id, job.started, job.ended, job.result_ttl,
                                               job.result, job.ended_text, job.working)]
    left = call(connection, "finish_many", keys, [now, now_text, worker, int(bool(index)), *words])
    return [int(position) - 1 for position in left]


def find_abandoned(connection: Redis, queues: Sequence[tuple[str, str]], execution_prefix: str,
                   worker_prefix: str) -> list[tuple[int, str, str, str]]:
    """Jobs no live worker holds (``find_abandoned.lua``, read only); ``queues`` are (started
    registry, intermediate list) each. Returns (queue index, started-registry entry or "", job id,
    worker or "") each.

    Usage: ``find_abandoned(redis, [("rq:wip:a", "rq:queue:a:intermediate")], "rq:execution:", "rqplus:worker:")``
    """
    found = call(connection, "find_abandoned", [key for pair in queues for key in pair],
                 [execution_prefix, worker_prefix])
    return [(int(index) - 1, as_text(entry), as_text(job_id), as_text(worker))
            for index, entry, job_id, worker in zip(found[0::4], found[1::4], found[2::4], found[3::4])]


def rescue(connection: Redis, keys: QueueKeys, held: str, failed: str, intermediate: str, job_key: str,
           alive_key: str | None, job_id: str, job_key_prefix: str, default_priority: int, entry: str,
           max_rescues: int, failed_score: int, priority: int) -> int:
    """Put an abandoned job back in its queue at its priority (``rescue.lua``, which documents the
    reply); ``alive_key``: the worker that held it, left alone while that key exists (None: no check).

    Usage: ``rescue(redis, queue_keys("a"), "rq:wip:a", "rq:failed:a", "rq:queue:a:intermediate", job.key, None, job.id, "rq:job:", 5, entry, 3, expiry, 0)``
    """
    return call(connection, "rescue", [*keys[:4], held, failed, intermediate, job_key, *filter(None, [alive_key])],
                [job_id, job_key_prefix, default_priority, entry, max_rescues, failed_score, keys.backlog, priority])
