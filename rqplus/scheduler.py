"""Scheduling that keeps priority: jobs from ``enqueue_at``/``enqueue_in`` join their queue in
priority order when they fall due.

Usage: nothing to call — ``rqplus.Worker`` (``rq worker -w rqplus.Worker --with-scheduler``)
runs :class:`PriorityScheduler` in place of RQ's built-in scheduler.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from rq.job import Job
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp

from rqplus.faults import wait_out
from rqplus.queue import Queue


class PriorityScheduler(RQScheduler):
    """RQ's built-in scheduler, moving due jobs through :class:`rqplus.Queue`."""

    queue_class: type[Queue] = Queue

    # RQ change: Redis faults (unreachable, loading, out of memory) are waited out in each step of
    # the scheduler's loop; RQ's scheduler process dies on them and is started again only at the
    # worker's next maintenance pass (10 minutes by default).
    def acquire_locks(self, auto_start: bool = False) -> Any:
        return wait_out(partial(super().acquire_locks, auto_start), self.log, "Scheduler")

    # RQ change: see acquire_locks.
    def heartbeat(self) -> None:
        wait_out(super().heartbeat, self.log, "Scheduler")

    # RQ change: see acquire_locks.
    def enqueue_scheduled_jobs(self) -> None:
        wait_out(self._enqueue_due_jobs, self.log, "Scheduler")

    # RQScheduler hard-codes rq.Queue, whose push appends at the tail; the same loop here pushes
    # through rqplus.Queue's ordered insert.
    def _enqueue_due_jobs(self) -> None:
        self._status = self.Status.WORKING
        if not self._scheduled_job_registries and self._acquired_locks:
            self.prepare_registries()

        for registry in self._scheduled_job_registries:
            job_ids = registry.get_jobs_to_schedule(current_timestamp())
            if not job_ids:
                continue
            queue = self.queue_class(registry.name, connection=self.connection, serializer=self.serializer)
            with self.connection.pipeline() as pipeline:
                for job in Job.fetch_many(job_ids, connection=self.connection, serializer=self.serializer):
                    if job is not None:
                        queue._enqueue_job(job, pipeline=pipeline, at_front=job.should_enqueue_at_front())
                for job_id in job_ids:
                    registry.remove(job_id, pipeline=pipeline)
                pipeline.execute()
        self._status = self.Status.STARTED
