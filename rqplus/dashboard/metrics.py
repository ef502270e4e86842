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
from datetime import datetime

from redis import Redis
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.utils import as_text, utcparse
from rq_scheduler import Scheduler

from rqplus.defaults import DEFAULT_PRIORITY
from rqplus.durability import DurabilityReport, cached_check
from rqplus.queue import Queue
from rqplus.recovery import marker_key
from rqplus.dashboard.payloads import DashboardJob, SafeSerializer
from rqplus.worker import Worker

#: Queued ids read per queue for the per-priority counts; longer queues show partial counts.
SCAN_LIMIT = 10_000
#: Redis stream of queue depth samples (one entry: queue name -> depth), trimmed to about an hour.
DEPTH_KEY = "rqplus:dashboard:depth"
DEPTH_LOCK_KEY = "rqplus:dashboard:depth:lock"
#: Seconds between two depth samples, however many pages are open.
DEPTH_INTERVAL = 10
DEPTH_WINDOW = 3600
#: Upcoming rq-scheduler fires listed.
SCHEDULE_LIMIT = 50


@dataclass
class QueueStats:
    """One queue: depth, waiting jobs per priority and the oldest of each, registry counts.

    ``complete`` is False when the queue is longer than :data:`SCAN_LIMIT` (counts cover its head).
    """

    name: str
    depth: int
    by_priority: dict[int, int] = field(default_factory=dict)
    oldest: dict[int, tuple[str, datetime | None]] = field(default_factory=dict)
    started: int = 0
    failed: int = 0
    scheduled: int = 0
    complete: bool = True


def queue_stats(connection: Redis, limit: int = SCAN_LIMIT) -> list[QueueStats]:
    """Stats of every queue RQ knows (``rq:queues``), sorted by name.

    Usage: ``{s.name: s.depth for s in queue_stats(redis)}``
    """
    return [_one_queue(Queue(name, connection=connection), limit) for name in queue_names(connection)]


def queue_names(connection: Redis) -> list[str]:
    """Names of the queues RQ has registered.

    Usage: ``queue_names(redis) == ["default", "emails"]``
    """
    prefix = Queue.redis_queue_namespace_prefix
    return sorted(as_text(key)[len(prefix):] for key in connection.smembers(Queue.redis_queues_keys))


def _one_queue(queue: Queue, limit: int) -> QueueStats:
    connection = queue.connection
    job_ids = [as_text(job_id) for job_id in connection.lrange(queue.key, 0, limit - 1)]
    with connection.pipeline(transaction=False) as pipe:
        pipe.llen(queue.key)
        for job_id in job_ids:
            pipe.hmget(queue.job_class.key_for(job_id), "priority", "enqueued_at")
        depth, *fields = pipe.execute()
    stats = QueueStats(queue.name, depth, complete=depth <= limit,
                       started=StartedJobRegistry(queue.name, connection=connection).get_job_count(cleanup=False),
                       failed=FailedJobRegistry(queue.name, connection=connection).get_job_count(cleanup=False),
                       scheduled=ScheduledJobRegistry(queue.name, connection=connection).get_job_count(cleanup=False))
    for job_id, (priority, enqueued_at) in zip(job_ids, fields):
        level = int(priority) if priority is not None else DEFAULT_PRIORITY  # stock RQ pushes count as 5
        stats.by_priority[level] = stats.by_priority.get(level, 0) + 1
        when = utcparse(as_text(enqueued_at)) if enqueued_at else None
        # the list is in run order, so the first id of a priority is usually its oldest; at_front
        # and stock pushes can break that, hence the comparison
        if level not in stats.oldest or (when and (stats.oldest[level][1] is None or when < stats.oldest[level][1])):
            stats.oldest[level] = (job_id, when)
    stats.by_priority = dict(sorted(stats.by_priority.items()))
    return stats


@dataclass
class WorkerInfo:
    """A registered worker: ``kind`` is ``rqplus.Worker`` when it keeps rqplus' liveness marker."""

    name: str
    kind: str
    concurrency: int
    state: str
    queues: list[str]
    current_job_id: str | None
    last_heartbeat: datetime | None


def workers(connection: Redis) -> list[WorkerInfo]:
    """Every registered worker, sorted by name.

    Usage: ``[w.kind for w in workers(redis)]``
    """
    found = Worker.all(connection=connection, job_class=DashboardJob, serializer=SafeSerializer)
    with connection.pipeline(transaction=False) as pipe:
        for worker in found:
            pipe.exists(marker_key(worker.name))
        is_rqplus = pipe.execute()
    return sorted((
        WorkerInfo(name=worker.name, kind="rqplus.Worker" if marked else "rq.Worker",
                   # RQ workers run one job at a time (one work-horse); a worker pool shows as several
                   concurrency=1, state=str(worker.get_state()), queues=worker.queue_names(),
                   current_job_id=worker.get_current_job_id(), last_heartbeat=worker.last_heartbeat)
        for worker, marked in zip(found, is_rqplus)), key=lambda w: w.name)


def scheduled_fires(connection: Redis, limit: int = SCHEDULE_LIMIT) -> list[tuple[DashboardJob, datetime]]:
    """The next ``limit`` rq-scheduler fires, soonest first: ``(job, when)`` pairs.

    Usage: ``[(job.origin, when) for job, when in scheduled_fires(redis)]``
    """
    scheduler = Scheduler(connection=connection, job_class=DashboardJob)
    return list(scheduler.get_jobs(with_times=True, offset=0, length=limit))


def sample_depths(connection: Redis, now: float | None = None) -> bool:
    """Record every queue's depth in the depth stream, at most once per :data:`DEPTH_INTERVAL`
    seconds across all dashboard processes; True when a sample was taken.

    Usage: ``sample_depths(redis)  # on each page view; cheap when throttled``
    """
    if not connection.set(DEPTH_LOCK_KEY, 1, nx=True, ex=DEPTH_INTERVAL):
        return False
    names = queue_names(connection)
    if not names:
        return False
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(Queue(name, connection=connection).key)
        depths = pipe.execute()
    millis = int((now if now is not None else time.time()) * 1000)
    connection.xadd(DEPTH_KEY, dict(zip(names, depths)), id=f"{millis}-*",
                    maxlen=DEPTH_WINDOW // DEPTH_INTERVAL * 2, approximate=True)
    return True


def depth_history(connection: Redis, window: int = DEPTH_WINDOW,
                  now: float | None = None) -> dict[str, list[tuple[float, int]]]:
    """Depth samples of the last ``window`` seconds: queue name -> ``[(unix time, depth), ...]``.

    Usage: ``depth_history(redis)["emails"][-1]  # (1718000000.0, 12)``
    """
    start = int(((now if now is not None else time.time()) - window) * 1000)
    series: dict[str, list[tuple[float, int]]] = {}
    for entry_id, fields in connection.xrange(DEPTH_KEY, min=start):
        at = int(as_text(entry_id).split("-")[0]) / 1000
        for name, depth in fields.items():
            series.setdefault(as_text(name), []).append((at, int(depth)))
    return series


def prometheus(connection: Redis, report: DurabilityReport | None = None) -> str:
    """The dashboard's numbers in Prometheus' text exposition format (version 0.0.4).

    Usage: ``prometheus(redis).splitlines()[0]  # "# HELP rqplus_queue_jobs ..."``
    """
    stats = queue_stats(connection)
    found = workers(connection)
    report = report if report is not None else cached_check(connection)
    now = time.time()
    families = [
        ("rqplus_queue_jobs", "Jobs waiting in a queue, by priority (0 most urgent).",
         [({"queue": s.name, "priority": str(p)}, n) for s in stats for p, n in s.by_priority.items()]),
        ("rqplus_queue_depth", "Jobs waiting in a queue.", [({"queue": s.name}, s.depth) for s in stats]),
        ("rqplus_queue_oldest_job_age_seconds", "Age of the oldest waiting job, by priority.",
         [({"queue": s.name, "priority": str(p)}, round(now - when.timestamp(), 3))
          for s in stats for p, (_, when) in s.oldest.items() if when]),
        ("rqplus_started_jobs", "Jobs running now.", [({"queue": s.name}, s.started) for s in stats]),
        ("rqplus_failed_jobs", "Jobs in the failed registry.", [({"queue": s.name}, s.failed) for s in stats]),
        ("rqplus_workers", "Registered workers, by class and state.",
         [({"class": kind, "state": state}, n)
          for (kind, state), n in sorted(Counter((w.kind, w.state) for w in found).items())]),
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
