"""What the dashboard's buttons do: requeue (at the job's priority), delete, empty, compact, bulk
requeue. Each is recorded in the audit log, and refuses cleanly (:class:`ActionError` with an HTTP
status and a message) instead of failing half-way.

Usage::

    from rqplus.dashboard.actions import Actor, requeue
    requeue(redis, job_id, Actor("admin", "127.0.0.1"))      # back in its queue, at its priority
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from redis import Redis
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
from rq.utils import as_text

from rqplus.dashboard import audit
from rqplus.dashboard.metrics import all_queues
from rqplus.dashboard.payloads import DashboardJob, SafeSerializer, serializer_for, withheld_in
from rqplus.queue import Queue

#: The registries rq-dashboard's "Empty" button can clear, by the name in its URLs.
REGISTRIES: dict[str, type[BaseRegistry]] = {
    "failed": FailedJobRegistry, "deferred": DeferredJobRegistry, "started": StartedJobRegistry,
    "finished": FinishedJobRegistry, "canceled": CanceledJobRegistry, "scheduled": ScheduledJobRegistry,
}
#: Failed jobs looked at per queue by the bulk requeue filter.
BULK_SCAN_LIMIT = 5000
#: An exception's (dotted) type name, as tracebacks print it.
_TYPE_NAME = re.compile(r"[A-Za-z_][\w.]*")


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
    withheld = withheld_in(job.meta)
    if withheld:
        raise ActionError(409, f"job {job.id} has meta the dashboard does not load ({', '.join(withheld)}): "
                               "requeue it from Python with rqplus.Queue.requeue_failed")
    if not isinstance(job.meta, dict) or "unserialized" in job.meta:  # RQ's stand-in for meta it could not load
        raise ActionError(409, f"job {job.id} has meta that cannot be read: requeueing would replace it; requeue "
                               "it from Python with rqplus.Queue.requeue_failed")
    # saved back with the serializer that wrote it, so the worker reads it as before
    queue = Queue(job.origin, connection=connection, serializer=serializer_for(job.data))
    try:
        queue.requeue_failed(job.id)
    except (InvalidJobOperation, NoSuchJobError):  # requeued or deleted meanwhile
        raise ActionError(409, f"job {job.id} is not in the failed registry of queue {job.origin!r}") from None


def requeue_all(connection: Redis, queue_name: str, actor: Actor) -> int:
    """Requeue every failed job of ``queue_name`` at its priority; returns how many were requeued.

    Usage: ``requeue_all(redis, "emails", Actor("admin"))``
    """
    job_ids = FailedJobRegistry(queue_name, connection=connection).get_job_ids(cleanup=False)
    jobs = [job for start in range(0, len(job_ids), BULK_SCAN_LIMIT)
            for job in fetch_many(connection, job_ids[start:start + BULK_SCAN_LIMIT])]
    return _requeue_many(connection, jobs, actor, f"failed jobs of queue {queue_name}")


@dataclass
class FailedJob:
    """A failed job as the bulk requeue filter sees it; ``job`` is the job as loaded for the listing."""

    id: str
    queue: str
    function: str
    exception: str
    job: DashboardJob = field(repr=False, compare=False)

    def matches(self, queue: str | None = None, function: str | None = None, exception: str | None = None) -> bool:
        """True when every filter given (exact names; None: any) matches: the one filter rule of
        the failed-jobs page and its bulk requeue.

        Usage: ``[job for job in failed_jobs(redis) if job.matches(exception="TimeoutError")]``
        """
        return all(wanted is None or wanted == value
                   for wanted, value in ((queue, self.queue), (function, self.function), (exception, self.exception)))


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
            item = FailedJob(job.id, name, _function_of(job), exception_type(exc_text), job)
            if item.matches(queue, function, exception):
                found.append(item)
    return found


def beyond_scan(connection: Redis) -> dict[str, int]:
    """Queues holding more failed jobs than :func:`failed_jobs` looks at (``BULK_SCAN_LIMIT``),
    with how many they hold: the filter and its bulk requeue take the oldest ones, in rounds.

    Usage: ``beyond_scan(redis)  # -> {"emails": 7200}``
    """
    names = [queue.name for queue in all_queues(connection)]
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zcard(FailedJobRegistry(name, connection=connection).key)
        counts = pipe.execute()
    return {name: count for name, count in zip(names, counts) if count > BULK_SCAN_LIMIT}


def selection_digest(jobs: list[FailedJob]) -> str:
    """A digest of the job ids selected: the bulk requeue runs only if the jobs matching now are
    exactly the ones the user confirmed (not merely as many).

    Usage: ``selection_digest(failed_jobs(redis, queue="q"))``
    """
    return hashlib.sha256("\n".join(sorted(job.id for job in jobs)).encode()).hexdigest()


def requeue_matching(connection: Redis, jobs: list[FailedJob], actor: Actor, what: str) -> int:
    """Requeue the given failed jobs (from :func:`failed_jobs`, not fetched again); returns how many
    were requeued.

    Usage: ``requeue_matching(redis, failed_jobs(redis, queue="q"), Actor("admin"), "queue q")``
    """
    return _requeue_many(connection, [job.job for job in jobs], actor, what)


def _requeue_many(connection: Redis, jobs: list[DashboardJob | None], actor: Actor, what: str) -> int:
    requeued = skipped = 0
    for job in jobs:
        if job is None:  # gone since its id was listed
            skipped += 1
            continue
        try:
            _requeue_loaded(connection, job)
            requeued += 1
        except ActionError:  # one odd job (requeued meanwhile, unloadable meta) must not stop the rest
            skipped += 1
    # one entry for the whole batch, with its counts
    audit.record(connection, actor.user, "requeue-many", what, ip=actor.ip, count=requeued, skipped=skipped)
    return requeued


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


def exception_type(exc_text: str | None) -> str:
    """The exception's type name from a traceback or ``"Type: message"`` text; "" when there is none.

    The type heads the first unindented line after the last traceback's frames (the message,
    secrets included, may run on over more lines): only a dotted name is taken from it.

    Usage: ``exception_type("Traceback ...\\n  File ...\\nValueError: bad\\ninput") == "ValueError"``
    """
    lines = (exc_text or "").splitlines()
    start = max((n for n, line in enumerate(lines) if line.startswith("Traceback")), default=-1) + 1
    line = next((line for line in lines[start:] if line.strip() and not line[0].isspace()), "")
    name = line.split(":", 1)[0].strip()
    return name if _TYPE_NAME.fullmatch(name) else ""


def exc_texts(connection: Redis, jobs: list[DashboardJob]) -> list[str | None]:
    """Each job's exception text (see :func:`exc_text`), from its latest result: one pipelined
    round trip for all.

    Usage: ``dict(zip(jobs, exc_texts(redis, jobs)))``
    """
    with connection.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.xrevrange(Result.get_key(job.id), "+", "-", count=1)
        latest = pipe.execute()
    return [exc_text(job, Result.restore(job.id, as_text(entries[0][0]), entries[0][1], connection=connection,
                                         serializer=SafeSerializer) if entries else None)
            for job, entries in zip(jobs, latest)]


def exc_text(job: DashboardJob, latest: Result | None) -> str | None:
    """The job's exception text: from its latest result, else from the job hash, where jobs failed
    without a result entry (rqplus' quarantine of unreadable jobs, older RQ) keep it (already
    loaded: RQ's ``job.exc_info`` would fetch the latest result once more).

    Usage: ``exc_text(job, job.latest_result())``
    """
    return latest.exc_string if latest and latest.exc_string else job._exc_info


def _function_of(job: DashboardJob) -> str:
    try:
        return job.func_name or "?"
    except Exception:  # unreadable job data (RQ raises DeserializationError): still listed
        return "?"
