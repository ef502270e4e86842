"""What the dashboard measures: queues by priority, workers, scheduled fires, depth over time,
and the same numbers in Prometheus' text format.

Everything here reads plain hash fields and registries; no job payload is unpickled (scheduled
jobs load through :class:`rqplus.dashboard.payloads.DashboardJob`).

Usage::

    from rqplus.dashboard import metrics
    for stats in metrics.queue_stats(redis):
        print(stats.name, stats.by_priority)            # {0: 3, 5: 12}
    print(metrics.prometheus(redis))                    # rqplus_queue_jobs{queue="emails",priority="0"} 3
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from redis import Redis
from rq.executions import Execution
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.utils import as_text, utcparse
from rq_scheduler import Scheduler

from rqplus.compat import execution_candidates
from rqplus.dashboard.payloads import DashboardJob
from rqplus.defaults import DEFAULT_PRIORITY
from rqplus.durability import DurabilityReport, cached_check
from rqplus.priority import LEVELS, validate_priority
from rqplus.queue import Queue
from rqplus.recovery import marker_key, read_identity
from rqplus.requeue import function_name
from rqplus.unpickling import inflated
from rqplus.worker import Worker

#: Ids read from a queue's RQ list for the per-priority counts. The list holds at most
#: ``rqplus.scripts.WINDOW`` jobs pushed by rqplus; only stock RQ pushes can make it longer, and
#: then the counts are partial (``complete`` False, ``rqplus_queue_jobs_exact`` 0).
SCAN_LIMIT = 10_000
#: Redis stream of queue depth samples (one entry: queue name -> depth), trimmed to about an hour.
DEPTH_KEY = "rqplus:dashboard:depth"
DEPTH_LOCK_KEY = "rqplus:dashboard:depth:lock"
#: Seconds between two depth samples, however many pages are open.
DEPTH_INTERVAL = 10
DEPTH_WINDOW = 3600
#: Upcoming rq-scheduler fires listed.
SCHEDULE_LIMIT = 50
#: What a worker without rqplus' marker is shown as: RQ records no worker class.
STOCK_WORKER = "stock RQ worker"


@dataclass
class QueueStats:
    """One queue: depth, waiting jobs per priority and the oldest of each, registry counts.

    ``complete`` is False when the queue's RQ list is longer than :data:`SCAN_LIMIT` (the
    per-priority counts then cover its head and the backlog).
    """

    name: str
    depth: int
    by_priority: dict[int, int] = field(default_factory=dict)
    oldest: dict[int, tuple[str, datetime | None]] = field(default_factory=dict)
    started: int = 0
    failed: int = 0
    scheduled: int = 0
    complete: bool = True


def queue_stats(connection: Redis, limit: int = SCAN_LIMIT, queues: list[Queue] | None = None) -> list[QueueStats]:
    """Stats of ``queues`` (default: every queue RQ knows, :func:`all_queues`): one pipelined
    round trip per queue after reading its first ``limit`` ids.

    Usage: ``{s.name: s.depth for s in queue_stats(redis)}``
    """
    return [_one_queue(queue, limit) for queue in (all_queues(connection) if queues is None else queues)]


def all_queues(connection: Redis) -> list[Queue]:
    """Every queue RQ has registered (``rqplus.Queue.all``), sorted by name: the one listing the
    dashboard's pages, metrics and actions share.

    Usage: ``[q.name for q in all_queues(redis)] == ["default", "emails"]``
    """
    return sorted(Queue.all(connection=connection), key=lambda queue: queue.name)


def stored_priority(raw: bytes | str | None) -> int:
    """A priority as recorded beside a queue's window (:func:`rqplus.priority.window_key`); the
    default for a missing or bad one (stock RQ pushes have none; a forged entry must not break a page).

    Usage: ``stored_priority(b"0") == 0 and stored_priority(b"x") == 5``
    """
    try:
        return validate_priority(int(as_text(raw))) if raw is not None else DEFAULT_PRIORITY
    except (TypeError, ValueError):
        return DEFAULT_PRIORITY


def _stored_time(raw: bytes | str | None) -> datetime | None:
    # a job hash's time field; None when missing or unreadable (forged or corrupted: the page stays up)
    try:
        return utcparse(as_text(raw)) if raw else None
    except ValueError:
        return None


def _one_queue(queue: Queue, limit: int) -> QueueStats:
    # exact per-level counts: the window's ids with their recorded priorities (O(window)), plus the
    # length of each backlog level (O(1) each); oldest of a level: its first id in the window, else
    # the head of its backlog list (the list is in run order: at_front and stock pushes can break
    # that, hence the comparison)
    connection = queue.connection
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(queue.key)
        pipe.lrange(queue.key, 0, limit - 1)
        for key in queue.backlog_keys:
            pipe.llen(key)
            pipe.lindex(key, 0)
        for registry in (StartedJobRegistry, FailedJobRegistry, ScheduledJobRegistry):
            pipe.zcard(registry(queue.name, connection=connection).key)
        window_length, window_ids, *rest = pipe.execute()
    backlog, (started, failed, scheduled) = rest[:-3], rest[-3:]
    window_ids = [as_text(job_id) for job_id in window_ids]
    levels = [stored_priority(raw) for raw in (connection.hmget(queue.window_key, window_ids) if window_ids else [])]
    candidates: dict[int, list[str]] = {}
    by_priority: dict[int, int] = {}
    for job_id, level in zip(window_ids, levels):
        by_priority[level] = by_priority.get(level, 0) + 1
        candidates.setdefault(level, []).append(job_id)
    for level, length, head in zip(LEVELS, backlog[0::2], backlog[1::2]):
        if length:
            by_priority[level] = by_priority.get(level, 0) + length
            candidates.setdefault(level, []).append(as_text(head))
    firsts = [(level, ids[0]) for level, ids in candidates.items()]
    firsts += [(level, ids[-1]) for level, ids in candidates.items() if len(ids) > 1]
    with connection.pipeline(transaction=False) as pipe:
        for _, job_id in firsts:
            pipe.hget(queue.job_class.key_for(job_id), "enqueued_at")
        stamps = pipe.execute()
    stats = QueueStats(queue.name, window_length + sum(backlog[0::2]), complete=window_length <= limit,
                       started=started, failed=failed, scheduled=scheduled,
                       by_priority=dict(sorted(by_priority.items())))
    for (level, job_id), stamp in zip(firsts, stamps):
        when = _stored_time(stamp)
        if level not in stats.oldest or (when and (stats.oldest[level][1] is None or when < stats.oldest[level][1])):
            stats.oldest[level] = (job_id, when)
    return stats


@dataclass(frozen=True)
class RunningJob:
    """A job a worker runs now: one RQ execution of it.

    ``function`` is the job's dotted function name (``"?"`` when its data cannot be read, the job
    is gone, or it was not read); ``since`` is when the execution started (None if unreadable).
    """

    id: str
    function: str
    since: datetime | None


@dataclass
class WorkerInfo:
    """A registered worker and the jobs it runs now (``running``, oldest first). rqplus workers
    record their class and how many jobs they run at once (``concurrency``) beside their liveness
    marker; stock RQ workers record neither (``kind`` "stock RQ worker") and run one job at a time
    (a worker pool shows as several workers).
    """

    name: str
    kind: str
    concurrency: int
    state: str
    queues: list[str]
    last_heartbeat: datetime | None
    running: list[RunningJob] = field(default_factory=list)

    @property
    def current_job_id(self) -> str | None:
        """The id of the job it has run the longest of those it runs now; None when idle.

        Usage: ``[w.name for w in workers(redis) if w.current_job_id]``
        """
        return self.running[0].id if self.running else None


def workers(connection: Redis, functions: bool = True) -> list[WorkerInfo]:
    """Every registered worker with the jobs it runs now, sorted by name, in four pipelined round
    trips however many workers and jobs: the worker keys; their hashes and rqplus markers; the keys
    of their executions (:func:`rqplus.compat.execution_candidates`); the executions and the
    function names of their jobs (read from the jobs' data unless ``functions`` is False).

    Usage: ``[(w.kind, w.concurrency, [job.id for job in w.running]) for w in workers(redis)]``
    """
    prefix = Worker.redis_worker_namespace_prefix
    names = sorted(key[len(prefix):] for key in map(_text, connection.smembers(Worker.redis_workers_keys))
                   if key.startswith(prefix))
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(prefix + name)
            pipe.get(marker_key(name))
        replies = pipe.execute()
    found = []
    for name, raw, marker in zip(names, replies[0::2], replies[1::2]):
        if not raw:  # registered, but its hash expired: RQ's Worker.all leaves it out too
            continue
        fields = {_text(key): _text(value) for key, value in raw.items()}
        kind, concurrency = read_identity(marker) or (STOCK_WORKER, 1)
        found.append(WorkerInfo(name=name, kind=kind, concurrency=concurrency, state=fields.get("state") or "?",
                                queues=[queue for queue in fields.get("queues", "").split(",") if queue],
                                last_heartbeat=_stored_time(fields.get("last_heartbeat"))))
    running = _running_jobs(connection, execution_candidates(connection, {w.name: w.queues for w in found}),
                            functions) if found else {}
    for worker in found:
        worker.running = sorted(running.get(worker.name, []),
                                key=lambda job: (job.since or datetime.max.replace(tzinfo=timezone.utc), job.id))
    return found


def _running_jobs(connection: Redis, candidates: list[str], functions: bool) -> dict[str, list[RunningJob]]:
    # worker name -> its running jobs: the candidates whose execution hash still exists, assigned
    # to the worker it names; one pipelined round trip
    if not candidates:
        return {}
    executions = [Execution.from_composite_key(key, connection=connection) for key in candidates]
    with connection.pipeline(transaction=False) as pipe:
        for execution in executions:
            pipe.hmget(execution.key, "worker_name", "created_at")
        if functions:
            for execution in executions:
                pipe.hget(DashboardJob.key_for(execution.job_id), "data")
        replies = pipe.execute()
    data = replies[len(executions):] if functions else [None] * len(executions)
    running: dict[str, list[RunningJob]] = {}
    for execution, (worker_name, created_at), raw in zip(executions, replies, data):
        if worker_name is not None:
            job = RunningJob(execution.job_id, _function(raw) if functions else "?", _stamp(created_at))
            running.setdefault(_text(worker_name), []).append(job)
    return running


def _text(raw: bytes | str) -> str:
    # a forged hash may hold bytes that are no UTF-8: the page shows them replaced, and stays up
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


def _stamp(raw: bytes | None) -> datetime | None:
    # an execution's unix time field; None when missing or unreadable
    try:
        return datetime.fromtimestamp(float(raw), tz=timezone.utc) if raw else None
    except (ValueError, OverflowError, OSError):
        return None


def _function(raw: bytes | None) -> str:
    # a job's data field as RQ's Job.restore reads it (zlib-compressed; jobs of older RQ: as is), bounded
    return function_name(inflated(raw)) if raw else "?"


def scheduled_fires(connection: Redis, limit: int = SCHEDULE_LIMIT) -> list[tuple[DashboardJob, datetime]]:
    """The next ``limit`` rq-scheduler fires, soonest first: ``(job, when)`` pairs.

    Usage: ``[(job.origin, when) for job, when in scheduled_fires(redis)]``
    """
    scheduler = Scheduler(connection=connection, job_class=DashboardJob)
    return list(scheduler.get_jobs(with_times=True, offset=0, length=limit))


def sample_depths(connection: Redis, queues: list[Queue] | None = None) -> float | None:
    """Record the depth of ``queues`` (default: :func:`all_queues`) in the depth stream, at most once per :data:`DEPTH_INTERVAL`
    seconds across all dashboard processes; returns the sample's time (Redis' clock, read from the
    entry id Redis assigned), or None when no sample was taken.

    The entry id is left to Redis (``XADD key * ...``, any Redis version): dashboards whose clocks
    disagree cannot write out-of-order ids.

    Usage: ``sample_depths(redis)  # on each page view; cheap when throttled``
    """
    if not connection.set(DEPTH_LOCK_KEY, 1, nx=True, ex=DEPTH_INTERVAL):
        return None
    queues = all_queues(connection) if queues is None else queues
    if not queues:
        return None
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue.key)
        depths = pipe.execute()
    entry_id = connection.xadd(DEPTH_KEY, {queue.name: depth for queue, depth in zip(queues, depths)},
                               maxlen=DEPTH_WINDOW // DEPTH_INTERVAL * 2, approximate=True)
    return _entry_time(entry_id)


def redis_time(connection: Redis) -> float:
    """Redis' clock as a unix time: the clock the depth samples are stamped with.

    Usage: ``depth_history(redis, now=redis_time(redis))``
    """
    seconds, micros = connection.time()
    return seconds + micros / 1_000_000


def _entry_time(entry_id: bytes | str) -> float:
    return int(as_text(entry_id).split("-")[0]) / 1000


def depth_history(connection: Redis, window: int = DEPTH_WINDOW,
                  now: float | None = None) -> dict[str, list[tuple[float, int]]]:
    """Depth samples of the last ``window`` seconds before ``now`` (default: Redis' clock, which
    stamps them): queue name -> ``[(unix time, depth), ...]``.

    Usage: ``depth_history(redis)["emails"][-1]  # (1718000000.0, 12)``
    """
    start = int(((now if now is not None else redis_time(connection)) - window) * 1000)
    series: dict[str, list[tuple[float, int]]] = {}
    for entry_id, fields in connection.xrange(DEPTH_KEY, min=start):
        at = _entry_time(entry_id)
        for name, depth in fields.items():
            series.setdefault(as_text(name), []).append((at, int(depth)))
    return series


def prometheus(connection: Redis, report: DurabilityReport | None = None) -> str:
    """The dashboard's numbers in Prometheus' text exposition format (version 0.0.4).

    Usage: ``prometheus(redis).splitlines()[0]  # "# HELP rqplus_queue_jobs ..."``
    """
    stats = queue_stats(connection)
    found = workers(connection, functions=False)
    report = report if report is not None else cached_check(connection)
    now = time.time()
    families = [
        ("rqplus_queue_jobs", "Jobs waiting in a queue, by priority (0 most urgent).",
         [({"queue": s.name, "priority": str(p)}, n) for s in stats for p, n in s.by_priority.items()]),
        ("rqplus_queue_jobs_exact", "1 when rqplus_queue_jobs counts every waiting job of the queue, 0 when partial.",
         [({"queue": s.name}, int(s.complete)) for s in stats]),
        ("rqplus_queue_depth", "Jobs waiting in a queue.", [({"queue": s.name}, s.depth) for s in stats]),
        ("rqplus_queue_oldest_job_age_seconds", "Age of the oldest waiting job, by priority.",
         [({"queue": s.name, "priority": str(p)}, round(now - when.timestamp(), 3))
          for s in stats for p, (_, when) in s.oldest.items() if when]),
        ("rqplus_started_jobs", "Jobs running now.", [({"queue": s.name}, s.started) for s in stats]),
        ("rqplus_failed_jobs", "Jobs in the failed registry.", [({"queue": s.name}, s.failed) for s in stats]),
        ("rqplus_workers", "Registered workers, by class and state.",
         [({"class": kind, "state": state}, n)
          for (kind, state), n in sorted(Counter((w.kind, w.state) for w in found).items())]),
        ("rqplus_worker_running_jobs", "Jobs a worker runs now.",
         [({"worker": w.name, "class": w.kind}, len(w.running)) for w in found]),
        ("rqplus_worker_concurrency", "Jobs a worker runs at once at most.",
         [({"worker": w.name, "class": w.kind}, w.concurrency) for w in found]),
        ("rqplus_redis_durable", "1 when Redis keeps acknowledged jobs through a crash (rqplus check).",
         [({}, int(report.ok))]),
    ]
    lines = []
    for name, help_text, samples in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{_labels(labels)} {value}" for labels, value in samples]
    return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape_label(value)}"' for key, value in labels.items()) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
