"""Rescue of jobs whose worker died: the seed's "reliable queue with timeout-based recovery".

RQ marks a job whose worker was SIGKILLed as failed (``AbandonedJobError``) about 90 s to 11 min
later, and never runs it again unless it carries a ``Retry``. rqplus re-runs it instead:

* every rqplus worker keeps two keys: ``rqplus:worker:<name>`` (it is an rqplus worker, 1 day;
  the value names its class and concurrency, see :func:`worker_identity`) and
  ``rqplus:worker:<name>:alive`` (refreshed by every heartbeat; expires ``liveness_ttl``
  seconds after the last one);
* every ``rescue_interval`` seconds each live rqplus worker looks, in one Lua call, for started
  jobs whose rqplus worker stopped heartbeating, and for ids stuck in an intermediate list;
* each is put back in its queue at its priority by one atomic script, its rescue count (hash
  field ``rescues``) incremented; past ``max_rescues`` it fails with the reason instead (a job
  that kills every worker it runs on must not kill them all).

Usage (what ``rqplus.Worker`` does on its own)::

    from rqplus.recovery import rescue_abandoned
    rescue_abandoned(redis, [Queue("emails", connection=redis)], max_rescues=3)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.utils import current_timestamp

from rqplus.defaults import DEFAULT_PRIORITY
from rqplus.priority import priority_of
from rqplus.queue import Queue
from rqplus.scripts import find_abandoned, queue_keys, rescue

logger = logging.getLogger("rqplus.recovery")

#: Prefix of the keys by which rqplus workers show they are rqplus workers and alive.
WORKER_KEY_PREFIX = "rqplus:worker:"
#: How long the "this is an rqplus worker" marker outlives the worker's last heartbeat (seconds).
MARKER_TTL = 24 * 3600
#: Prefix of RQ's execution hashes (``rq.executions.Execution.key``), which name the worker.
EXECUTION_KEY_PREFIX = "rq:execution:"
#: Seconds an id may sit in an intermediate list, not started, before it is put back.
INTERMEDIATE_GRACE = 10


def marker_key(worker_name: str) -> str:
    return f"{WORKER_KEY_PREFIX}{worker_name}"


def alive_key(worker_name: str) -> str:
    return f"{WORKER_KEY_PREFIX}{worker_name}:alive"


def worker_identity(worker_class: type, concurrency: int) -> str:
    """The marker's value: what kind of rqplus worker this is, for the dashboard.

    Usage: ``worker_identity(type(worker), worker.concurrency)`` → ``'{"class": "rqplus.worker.Worker", ...}'``
    """
    return json.dumps({"class": f"{worker_class.__module__}.{worker_class.__qualname__}", "concurrency": concurrency})


def read_identity(value: bytes | str | None) -> tuple[str, int] | None:
    """``(class path, concurrency)`` from a marker's value; None when absent or unreadable.

    Usage: ``read_identity(redis.get(marker_key(name)))``
    """
    try:
        found = json.loads(value) if value else None
        return (str(found["class"]), int(found["concurrency"])) if found else None
    except (ValueError, TypeError, KeyError):
        return None


def mark_alive(connection: Redis | Pipeline, worker_name: str, liveness_ttl: int, identity: str) -> None:
    """Record that ``worker_name`` (an rqplus worker, see :func:`worker_identity`) is alive for
    ``liveness_ttl`` more seconds."""
    connection.set(marker_key(worker_name), identity, ex=MARKER_TTL)
    connection.set(alive_key(worker_name), 1, ex=liveness_ttl)


def mark_stopped(connection: Redis, worker_name: str) -> None:
    """A clean stop: nothing of this worker is left to rescue."""
    connection.delete(marker_key(worker_name), alive_key(worker_name))


@dataclass
class Rescue:
    """One job put back (or failed) by :func:`rescue_abandoned`."""

    queue: str
    job_id: str
    outcome: str  # "requeued", "failed" (too many rescues), "unstuck" (from an intermediate list) or "quarantined"
    rescues: int


def rescue_abandoned(
    connection: Redis, queues: Sequence[Queue], max_rescues: int, intermediate_grace: float = INTERMEDIATE_GRACE,
    restart_grace: float = 0,
) -> list[Rescue]:
    """Put back every job of ``queues`` held by a dead rqplus worker; return what was done.

    Safe to run from many workers at once: each job is claimed by exactly one atomic script.
    Nothing is put back while Redis has been up less than ``restart_grace`` seconds: liveness keys
    expire while Redis is down (its clock runs on), and live workers need a beat to renew them.

    Usage: ``rescue_abandoned(redis, [queue], max_rescues=3, restart_grace=20)``
    """
    if not queues:
        return []
    found = find_abandoned(connection, [(q.started_job_registry.key, q.intermediate_queue_key) for q in queues],
                           EXECUTION_KEY_PREFIX, WORKER_KEY_PREFIX)
    settling = bool(found) and restart_grace > 0 and int(connection.info("server")["uptime_in_seconds"]) < restart_grace
    done = []
    for index, entry, job_id, worker in found:
        queue = queues[index]
        if entry:
            rescue = None if settling else _rescue_started(connection, queue, entry, job_id, worker, max_rescues)
        else:
            rescue = _rescue_stuck(connection, queue, job_id, intermediate_grace, requeue=not settling)
        if rescue:
            logger.warning("Rescued job %s of queue %s: %s (rescues: %d)", job_id, queue.name, rescue.outcome,
                           rescue.rescues)
            done.append(rescue)
    return done


def _run_rescue(connection: Redis, queue: Queue, held_key: str, job_id: str, priority: int, entry: str,
                worker: str, max_rescues: int, failure_ttl: int) -> int:
    return rescue(connection, queue_keys(queue.name, queue.key), held_key, queue.failed_job_registry.key,
                  queue.intermediate_queue_key, queue.job_class.key_for(job_id), alive_key(worker) if worker else None,
                  job_id,
                  queue.job_class.redis_job_namespace_prefix, DEFAULT_PRIORITY, entry, max_rescues,
                  current_timestamp() + failure_ttl, priority)


def hand_back(connection: Redis, queue: Queue, job_id: str, execution_id: str, worker: str,
              max_rescues: int) -> Rescue | None:
    """A live worker puts back a job it held whose end was never recorded (its horse was killed, or
    ended while Redis was unreachable); counted as a rescue. None if the job is no longer held.

    Usage: ``hand_back(redis, queue, job.id, worker.execution.id, worker.name, 3)``
    """
    rescue = _rescue_started(connection, queue, f"{job_id}:{execution_id}", job_id, worker, max_rescues,
                             check_alive=False)
    if rescue:
        logger.warning("Handed back job %s of queue %s: %s (rescues: %d)", job_id, queue.name, rescue.outcome,
                       rescue.rescues)
    return rescue


def put_back_unstarted(connection: Redis, queue: Queue, job_id: str) -> bool:
    """Put ``job_id``, fetched into ``queue``'s intermediate list but not started, back in the
    queue at its priority (a worker that stops between its fetch and the job's start). Not counted
    as a rescue. False if it is no longer in the intermediate list.

    Usage: ``put_back_unstarted(redis, queue, job.id)``
    """
    return _run_rescue(connection, queue, queue.intermediate_queue_key, job_id, queue.job_priority(job_id), "", "",
                       0, 0) != -2


def _rescue_started(connection: Redis, queue: Queue, entry: str, job_id: str, worker: str,
                    max_rescues: int, check_alive: bool = True) -> Rescue | None:
    job = queue.fetch_job(job_id)
    if job is None:
        return None
    failure_ttl = job.failure_ttl if job.failure_ttl is not None else DEFAULT_FAILURE_TTL
    result = _run_rescue(connection, queue, queue.started_job_registry.key, job_id, priority_of(job), entry,
                         worker if check_alive else "", max_rescues, failure_ttl)
    if result == -2:
        return None
    if result == -1:
        _record_poison_pill(connection, job, worker, max_rescues)
        return Rescue(queue.name, job_id, "failed", max_rescues + 1)
    return Rescue(queue.name, job_id, "requeued", result)


def _record_poison_pill(connection: Redis, job: Job, worker: str, max_rescues: int) -> None:
    reason = (f"AbandonedJobError: job abandoned {max_rescues + 1} times (its worker died while running it, "
              f"last {worker}); not requeued again after {max_rescues} rescues")
    with connection.pipeline() as pipeline:
        job.set_status(JobStatus.FAILED, pipeline=pipeline)  # the job object was read before the rescue
        job._handle_failure(reason, pipeline, worker_name=worker)
        pipeline.execute()


def _rescue_stuck(connection: Redis, queue: Queue, job_id: str, grace: float, requeue: bool) -> Rescue | None:
    """An id moved to the intermediate list but never started: put back (if ``requeue``) once it has sat
    for ``grace`` s, or quarantined if its job cannot be loaded (RQ's dequeue skips such an id)."""
    intermediate = IntermediateQueue(queue.key, connection)
    intermediate.set_first_seen(job_id)
    first_seen = intermediate.get_first_seen(job_id)
    if first_seen is None or time.time() - first_seen.timestamp() < grace:
        return None
    reason = queue.unreadable(job_id)
    if reason is not None:
        queue.quarantine(job_id, reason)
        outcome = "quarantined"
    elif not requeue or not put_back_unstarted(connection, queue, job_id):
        return None
    else:
        outcome = "unstuck"
    connection.delete(intermediate.get_first_seen_key(job_id))
    return Rescue(queue.name, job_id, outcome, 0)
