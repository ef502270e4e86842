"""Scheduling with rq-scheduler 0.14 (its own process and Redis keys) on every supported rq: delayed
and periodic jobs reach an rqplus.Queue at their priority. (RQ's built-in scheduler, which
rqplus.scheduler.PriorityScheduler extends, is tested in tests/test_queue.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rq_scheduler import Scheduler

from rqplus import Queue, Worker
from tests.jobs import ran

JOB = "tests.jobs.record"


def scheduler(redis) -> Scheduler:
    return Scheduler(queue_name="q", connection=redis, queue_class=Queue)


def test_a_delayed_job_joins_the_queue_at_its_priority_when_due(redis):
    queue = Queue("q", connection=redis)
    waiting = [queue.enqueue(JOB, str(n), priority=5) for n in range(2)]
    due = scheduler(redis).enqueue_at(datetime.now(UTC) - timedelta(seconds=1), JOB, "delayed", meta={"priority": 0})
    later = scheduler(redis).enqueue_in(timedelta(hours=1), JOB, "later")
    scheduler(redis).enqueue_jobs()
    assert queue.get_job_ids() == [due.id, *[job.id for job in waiting]]
    assert later in scheduler(redis) and due not in scheduler(redis)
    Worker([queue], connection=redis).work(burst=True)
    assert ran(redis) == ["delayed", "0", "1"]


def test_a_periodic_job_runs_and_is_scheduled_again(redis):
    queue = Queue("q", connection=redis)
    start = datetime.now(UTC) - timedelta(seconds=1)
    periodic = scheduler(redis).schedule(start, JOB, args=["tick"], interval=60, repeat=3, meta={"priority": 1})
    queue.enqueue(JOB, "normal", priority=5)
    scheduler(redis).enqueue_jobs()
    Worker([queue], connection=redis).work(burst=True)
    assert ran(redis) == ["tick", "normal"]
    [(job, next_time)] = scheduler(redis).get_jobs(with_times=True)
    assert job.id == periodic.id and job.meta["repeat"] == 2
    assert timedelta(seconds=50) < next_time.replace(tzinfo=UTC) - start < timedelta(seconds=70)
