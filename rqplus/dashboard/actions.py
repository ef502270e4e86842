"""What the dashboard's buttons do: requeue (at the job's priority), delete, empty, compact, bulk
requeue (a background run of :mod:`rqplus.requeue`, driven by a thread of the dashboard). Each is
recorded in the audit log, and refuses cleanly (:class:`ActionError` with an HTTP status and a
message) instead of failing half-way.

Usage::

    from rqplus.dashboard.actions import Actor, requeue
    requeue(redis, job_id, Actor("admin", "127.0.0.1"))      # back in its queue, at its priority
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus, validate_job_id
from rq.registry import (
    BaseRegistry,
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result

from rqplus import requeue as runs
from rqplus.dashboard import audit
from rqplus.dashboard.metrics import all_queues
from rqplus.dashboard.payloads import DashboardJob
from rqplus.exceptions import RequeueBusyError, UnknownQueueError
from rqplus.queue import Queue
from rqplus.requeue import Filters, exception_type, function_name, result_exc_string, unsafe_meta
from rqplus.serializers import serializer_for

#: The registries rq-dashboard's "Empty" button can clear, by the name in its URLs.
REGISTRIES: dict[str, type[BaseRegistry]] = {
    "failed": FailedJobRegistry, "deferred": DeferredJobRegistry, "started": StartedJobRegistry,
    "finished": FinishedJobRegistry, "canceled": CanceledJobRegistry, "scheduled": ScheduledJobRegistry,
}
#: Failed jobs looked at per queue by the failed-jobs page (its bulk requeue runs over them all).
BULK_SCAN_LIMIT = 5000
#: Seconds between two batches of the dashboard's bulk requeues (see requeue_throttle).
THROTTLE_ENV = "RQPLUS_REQUEUE_THROTTLE"
log = logging.getLogger(__name__)


class ActionError(Exception):
    """An action refused: ``status`` is the HTTP status to answer (404 unknown, 409 wrong state)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Actor:
    """Who acts, for the audit log."""

    user: str
    ip: str | None = None


def fetch(connection: Redis, job_id: str) -> DashboardJob:
    """The job, loaded safely; :class:`ActionError` 404 when it does not exist.

    Usage: ``fetch(redis, job_id).get_status()``
    """
    if not is_job_id(job_id):
        raise ActionError(404, f"no job {job_id!r}: job ids are letters, digits, '_' and '-'")
    try:
        return DashboardJob.fetch(job_id, connection=connection)
    except NoSuchJobError:
        raise ActionError(404, f"no job {job_id!r}: it finished and expired, was deleted, or never existed") from None


def fetch_many(connection: Redis, job_ids: list[str]) -> list[DashboardJob | None]:
    """The jobs, loaded safely in one round trip, None for each one gone; ids RQ refuses (found
    in a forged list or registry) are left out.

    Usage: ``[job for job in fetch_many(redis, job_ids) if job is not None]``
    """
    return DashboardJob.fetch_many([job_id for job_id in job_ids if is_job_id(job_id)], connection=connection)


def is_job_id(job_id: str) -> bool:
    """True for an id RQ accepts (letters, digits, ``_`` and ``-``): RQ raises ``ValueError`` for
    any other, which could name no job.

    Usage: ``is_job_id("a.b") is False``
    """
    try:
        validate_job_id(job_id)
    except (TypeError, ValueError):
        return False
    return True


def requeue(connection: Redis, job_id: str, actor: Actor) -> DashboardJob:
    """Put a failed job back in its queue at its own priority (through ``rqplus.Queue.requeue_failed``).

    Raises :class:`ActionError`: 404 for an unknown job, 409 for a job that is not failed or
    whose meta holds objects the dashboard does not load (saving it back would change them).

    Usage: ``requeue(redis, job_id, Actor("admin"))``
    """
    job = _requeue(connection, job_id)
    audit.record(connection, actor.user, "requeue", f"job {job_id}", ip=actor.ip, queue=job.origin)
    return job


def _requeue(connection: Redis, job_id: str) -> DashboardJob:
    job = fetch(connection, job_id)
    _requeue_loaded(connection, job)
    return job


def _requeue_loaded(connection: Redis, job: DashboardJob) -> None:
    """Requeue an already loaded failed job by its id (RQ's requeue loads it once more, to save it)."""
    status = job.get_status(refresh=False)
    if status != JobStatus.FAILED:
        raise ActionError(409, f"job {job.id} is {status.value if status else 'without a status'}, not failed: "
                               "only failed jobs are requeued")
    unsafe = unsafe_meta(job.meta)
    if unsafe:
        raise ActionError(409, f"job {job.id} has {unsafe}: requeue it from Python with rqplus.Queue.requeue_failed")
    # saved back with the serializer that wrote it, so the worker reads it as before
    queue = Queue(job.origin, connection=connection, serializer=serializer_for(job.data))
    try:
        queue.requeue_failed(job.id)
    except (InvalidJobOperation, NoSuchJobError):  # requeued or deleted meanwhile
        raise ActionError(409, f"job {job.id} is not in the failed registry of queue {job.origin!r}") from None


def start_requeue(connection: Redis, filters: Filters, actor: Actor) -> tuple[runs.Run, bool]:
    """Start a bulk requeue of ``filters.queue``'s failed jobs matching ``filters`` (each at its
    priority), driven by a thread of this process, or join the run already going through that
    queue (one at a time, whatever its filters); returns the run at once, and True when this call
    started it. Audited at the start (or the join) and at the end (with its counts). A joined run
    whose driver died is driven from here. 404 for a queue Redis does not know, 409 when the
    queue's run can neither start nor be joined (see :class:`rqplus.exceptions.RequeueBusyError`).

    Usage: ``run, started = start_requeue(redis, Filters("emails", exception="TimeoutError"), Actor("admin"))``
    """
    assert filters.queue is not None, "a run requeues one queue's failed jobs"
    try:
        run, started = runs.start(connection, filters.queue, filters, user=actor.user, ip=actor.ip or "")
    except UnknownQueueError as error:
        raise ActionError(404, str(error)) from None
    except RequeueBusyError as error:
        raise ActionError(409, str(error)) from None
    audit.record(connection, actor.user, "requeue-start" if started else "requeue-join",
                 f"failed jobs {run.filters.describe()}", ip=actor.ip, run=run.id, total=run.total)
    owner = runs.new_owner()
    if runs.claim(connection, run.id, owner):
        _drive_in_background(connection, run, owner)
    return run, started


def resume_requeues(connection: Redis) -> list[runs.Run]:
    """Take over the bulk requeues whose driving process died (their heartbeat expired), each
    driven by a thread of this process from where it stopped; returns them.

    Usage: ``resume_requeues(redis)  # at dashboard start``
    """
    owner = runs.new_owner()
    resumed = [run for run in runs.orphaned(connection) if runs.claim(connection, run.id, owner)]
    for run in resumed:
        _drive_in_background(connection, run, owner)
    return resumed


def requeue_throttle() -> float:
    """Seconds the dashboard's bulk requeues pause between batches: ``$RQPLUS_REQUEUE_THROTTLE``
    (0 to 60, default 0), as ``rqplus requeue --throttle`` does, to spare a busy Redis.

    Usage: ``runs.drive(redis, run.id, owner, throttle=requeue_throttle())``
    """
    raw = os.environ.get(THROTTLE_ENV, "0")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 60:
        raise ValueError(f"{THROTTLE_ENV}={raw!r}: seconds from 0 to 60 between two batches of a bulk requeue")
    return seconds


def _drive_in_background(connection: Redis, run: runs.Run, owner: str) -> None:
    threading.Thread(target=_drive, args=(connection, run, owner), name=f"rqplus-requeue-{run.id}",
                     daemon=True).start()


def _drive(connection: Redis, run: runs.Run, owner: str) -> None:
    """A run's thread: drive it, then audit its end; a Redis outage leaves it resumable."""
    try:
        ended = runs.drive(connection, run.id, owner, throttle=requeue_throttle())
        if ended is not None and not ended.running:
            audit.record(connection, run.user, "requeue-many", f"failed jobs {run.filters.describe()}", ip=run.ip,
                         run=run.id, count=ended.done, skipped=ended.skipped, total=ended.total)
    except RedisError as error:  # Redis went away: the run stays resumable (its heartbeat lapses)
        log.warning("bulk requeue %s paused: Redis error %s; it resumes at the next dashboard start", run.id, error)
    except Exception as error:
        log.exception("bulk requeue %s failed", run.id)
        runs.fail(connection, run, owner, f"{type(error).__name__}: {error}")


@dataclass
class FailedJob:
    """A failed job as the bulk requeue filter sees it; ``job`` is the job as loaded for the listing."""

    id: str
    queue: str
    function: str
    exception: str
    job: DashboardJob = field(repr=False, compare=False)

    def matches(self, queue: str | None = None, function: str | None = None, exception: str | None = None) -> bool:
        """True when every filter given (exact names; None: any) matches: the filter rule of
        :class:`rqplus.requeue.Filters`, shared by the failed-jobs page and its bulk requeue.

        Usage: ``[job for job in failed_jobs(redis) if job.matches(exception="TimeoutError")]``
        """
        return Filters(queue, function, exception).matches(self.queue, self.function, self.exception)


def failed_jobs(connection: Redis, queue: str | None = None, function: str | None = None,
                exception: str | None = None) -> list[FailedJob]:
    """Failed jobs matching every filter given (exact queue, function and exception type names).

    Two pipelined round trips per queue: the jobs, then their latest results.

    Usage: ``failed_jobs(redis, queue="emails", exception="TimeoutError")``
    """
    names = [queue] if queue else [q.name for q in all_queues(connection)]
    found = []
    for name in names:
        job_ids = FailedJobRegistry(name, connection=connection).get_job_ids(0, BULK_SCAN_LIMIT - 1, cleanup=False)
        jobs = [job for job in fetch_many(connection, job_ids) if job is not None]
        for job, exc_text in zip(jobs, exc_texts(connection, jobs)):
            item = FailedJob(job.id, name, function_name(job.data), exception_type(exc_text), job)
            if item.matches(queue, function, exception):
                found.append(item)
    return found


def failed_counts(connection: Redis) -> dict[str, int]:
    """How many failed jobs each queue holds: one pipelined round trip.

    Usage: ``failed_counts(redis)  # -> {"emails": 7200, "default": 0}``
    """
    names = [queue.name for queue in all_queues(connection)]
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcard(FailedJobRegistry(name, connection=connection).key)
        return dict(zip(names, pipe.execute()))


def beyond_scan(connection: Redis) -> dict[str, int]:
    """Queues holding more failed jobs than :func:`failed_jobs` looks at (``BULK_SCAN_LIMIT``),
    with how many they hold: the page counts the oldest ones; its bulk requeue takes them all.

    Usage: ``beyond_scan(redis)  # -> {"emails": 7200}``
    """
    return {name: count for name, count in failed_counts(connection).items() if count > BULK_SCAN_LIMIT}


def selection_digest(jobs: list[FailedJob]) -> str:
    """A digest of the job ids selected: the bulk requeue runs only if the jobs matching now are
    exactly the ones the user confirmed (not merely as many).

    Usage: ``selection_digest(failed_jobs(redis, queue="q"))``
    """
    return hashlib.sha256("\n".join(sorted(job.id for job in jobs)).encode()).hexdigest()


def delete(connection: Redis, job_id: str, actor: Actor) -> None:
    """Delete a job and remove it from its queue and registries; 404 when it does not exist.

    Usage: ``delete(redis, job_id, Actor("admin"))``
    """
    job = fetch(connection, job_id)
    job.delete()
    audit.record(connection, actor.user, "delete", f"job {job_id}", ip=actor.ip, queue=job.origin)


def empty(connection: Redis, queue_name: str, registry_name: str, actor: Actor) -> int:
    """Delete every job of a queue (``registry_name`` "queued") or of one of its registries.

    Returns how many were removed; 404 for a registry name rq-dashboard does not have.

    Usage: ``empty(redis, "emails", "failed", Actor("admin"))``
    """
    if registry_name == "queued":
        queue = Queue(queue_name, connection=connection)
        count = queue.count
        queue.empty()
    elif registry_name in REGISTRIES:
        registry = REGISTRIES[registry_name](queue_name, connection=connection)
        job_ids = registry.get_job_ids(cleanup=False)
        for job_id in job_ids:
            try:
                DashboardJob.fetch(job_id, connection=connection).delete()
            except NoSuchJobError:  # an id whose job hash is gone: drop the id itself
                registry.remove(job_id)
        count = len(job_ids)
    else:
        raise ActionError(404, f"no registry {registry_name!r}: one of queued, {', '.join(REGISTRIES)}")
    audit.record(connection, actor.user, "empty", f"queue {queue_name} ({registry_name})", ip=actor.ip, count=count)
    return count


def compact(connection: Redis, queue_name: str, actor: Actor) -> None:
    """Drop ids of jobs that no longer exist from a queue (RQ's ``Queue.compact``); 404 for a
    queue Redis does not know.

    Usage: ``compact(redis, "emails", Actor("admin"))``
    """
    queue = Queue(queue_name, connection=connection)
    # RQ's compact renames the queue's list, which Redis refuses for a list that does not exist:
    # an unknown queue, or a known one whose last job was taken (nothing to compact)
    if connection.exists(queue.key):
        queue.compact()
    elif not connection.sismember(Queue.redis_queues_keys, queue.key):
        raise ActionError(404, f"no queue {queue_name!r}")
    audit.record(connection, actor.user, "compact", f"queue {queue_name}", ip=actor.ip)


def exc_texts(connection: Redis, jobs: list[DashboardJob]) -> list[str | None]:
    """Each job's exception text (see :func:`exc_text`), from its latest result: one pipelined
    round trip for all.

    Usage: ``dict(zip(jobs, exc_texts(redis, jobs)))``
    """
    with connection.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.xrevrange(Result.get_key(job.id), "+", "-", count=1)
        latest = pipe.execute()
    return [result_exc_string(entries) or job._exc_info for job, entries in zip(jobs, latest)]


def exc_text(job: DashboardJob, latest: Result | None) -> str | None:
    """The job's exception text: from its latest result, else from the job hash, where jobs failed
    without a result entry (rqplus' quarantine of unreadable jobs, older RQ) keep it (already
    loaded: RQ's ``job.exc_info`` would fetch the latest result once more).

    Usage: ``exc_text(job, job.latest_result())``
    """
    return latest.exc_string if latest and latest.exc_string else job._exc_info
