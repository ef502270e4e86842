"""``rqplus.Worker``: the one worker base of rqplus (thread and asyncio variants will extend it).

Usage::

    rq worker -w rqplus.Worker --queue-class rqplus.Queue emails payments

or from Python: ``rqplus.Worker(["emails"], connection=redis).work()``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError, RedisError, TimeoutError as RedisTimeoutError
from rq import Worker as RQWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.job import Job
from rq.utils import as_text

from rqplus.allowlist import refusal
from rqplus.durability import check
from rqplus.exceptions import DurabilityError
from rqplus.queue import Queue
from rqplus.recovery import hand_back, mark_alive, mark_stopped, rescue_abandoned, worker_identity
from rqplus.retry import stop_retries
from rqplus.scheduler import PriorityScheduler

#: Environment variable choosing what a worker does on a non-durable Redis: strict, warn or off.
DURABILITY_POLICY_ENV = "RQPLUS_DURABILITY"
DURABILITY_POLICIES = ("strict", "warn", "off")
#: Errors meaning Redis is unreachable for now (restarting, network): wait, do not quit.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)


class Worker(RQWorker):
    """An RQ ``Worker`` that keeps job priority, rescues jobs of dead workers and guards durability.

    Dequeue is RQ's own with one queue (the blocking, reliable BLMOVE into the intermediate list)
    and :meth:`rqplus.Queue.lpop` with several: reliable too, in the order the queues are named.
    The queue lists are in priority order, so the head is always the most urgent job.

    ``max_rescues`` (env ``RQPLUS_MAX_RESCUES``, default 3): how often a job whose worker died is
    put back before it fails. ``rescue_interval`` (env ``RQPLUS_RESCUE_INTERVAL``, default 5 s):
    how often this worker looks for such jobs; it is also the longest an idle worker blocks.
    """

    queue_class = Queue
    scheduler_class: type[PriorityScheduler] = PriorityScheduler
    durable: bool | None = None  # last durability verdict; None until checked (or policy off)
    max_rescues = 3
    rescue_interval = 5  # seconds
    concurrency = 1  # jobs run at once: RQ's one work-horse (shown on the dashboard)
    _last_rescue = 0.0

    def __init__(self, *args: Any, max_rescues: int | None = None, rescue_interval: int | None = None,
                 **kwargs: Any):
        env = os.environ
        self.max_rescues = int(env.get("RQPLUS_MAX_RESCUES", self.max_rescues)) if max_rescues is None else max_rescues
        self.rescue_interval = (int(env.get("RQPLUS_RESCUE_INTERVAL", self.rescue_interval))
                                if rescue_interval is None else rescue_interval)
        if self.max_rescues < 0 or self.rescue_interval < 1:
            raise ValueError("max_rescues must be >= 0 and rescue_interval >= 1 second")
        self.identity = worker_identity(type(self), self.concurrency)
        super().__init__(*args, **kwargs)

    @property
    def liveness_ttl(self) -> int:
        """Seconds after its last heartbeat at which this worker counts as dead and its job is rescued."""
        return max(self.job_monitoring_interval, self.rescue_interval) + 5

    # RQ change: block at most rescue_interval (RQ: worker_ttl - 15 = 405 s), so that an idle
    # worker heartbeats and rescues on time; still one blocking command per wait, no polling.
    @property
    def dequeue_timeout(self) -> int:
        return max(1, min(self.worker_ttl - 15, self.rescue_interval))

    # RQ change (undone): RQ derives the connection's socket timeout from dequeue_timeout; jobs may
    # block on the worker's connection far longer than rescue_interval, so RQ's own value is kept.
    @property
    def connection_timeout(self) -> int:
        return max(1, self.worker_ttl - 15) + 10

    # RQ change: every heartbeat also refreshes the liveness key read by rescuers elsewhere, in
    # the same round trip (RQ sends its own two heartbeat commands one by one).
    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None:  # part of job bookkeeping, executed by the caller
            super().heartbeat(timeout, pipeline)
            mark_alive(pipeline, self.name, self.liveness_ttl, self.identity)
            return
        with self.connection.pipeline(transaction=False) as own:
            super().heartbeat(timeout, own)
            mark_alive(own, self.name, self.liveness_ttl, self.identity)
            own.execute()
        self.rescue_if_due()

    # RQ change: a busy worker rescues too (from its monitoring loop, while the horse runs), and
    # Redis unreachable while the horse runs is not fatal (RQ's worker quits and leaves the horse
    # running unwatched): the beat is skipped; the liveness key outlasts a few missed beats.
    def maintain_heartbeats(self, job: Job) -> None:
        try:
            super().maintain_heartbeats(job)
        except REDIS_DOWN as error:
            self.log.warning("Worker %s: heartbeat for job %s failed, Redis unreachable (%s); the job keeps running",
                             self.name, job.id, error)
            return
        self.rescue_if_due()

    # RQ change: same for the working-time note (shown by `rq info`), which RQ writes every beat.
    def set_current_job_working_time(self, current_job_working_time: float, pipeline: Pipeline | None = None) -> None:
        try:
            super().set_current_job_working_time(current_job_working_time, pipeline)
        except REDIS_DOWN as error:  # informational only (rq info); RQ's worker would quit on it
            self.log.warning("Worker %s: could not record the job's working time, Redis unreachable (%s)",
                             self.name, error)

    # RQ change: if Redis goes away around a job (before the fork, or when the horse ends), wait for
    # it with backoff instead of quitting; then a job whose end was never recorded is handed back.
    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
            return
        except REDIS_DOWN as error:
            self.log.warning("Worker %s: Redis unreachable around job %s (%s); waiting for it", self.name, job.id,
                             error)
        self._horse_pid = 0  # only raised once the horse has ended (or before it was forked)
        self.wait_for_redis()
        self.hand_back_unfinished(job.id)

    def wait_for_redis(self) -> None:
        """Block until Redis answers PING, retrying with RQ's backoff settings."""
        wait = 1.0
        while True:
            try:
                self.connection.ping()
                return
            except REDIS_DOWN as error:
                self.log.error("Worker %s: could not connect to Redis instance: %s retrying in %d seconds...",
                               self.name, error, wait)
                time.sleep(wait)
                wait = min(wait * self.exponential_backoff_factor, self.max_connection_wait_time)

    def hand_back_unfinished(self, job_id: str) -> None:
        """Requeue ``job_id`` if it is still held by this worker's execution (nothing recorded its end)."""
        execution = self.execution
        origin = self.connection.hget(self.job_class.key_for(job_id), "origin")
        if execution is None or execution.job_id != job_id or origin is None:
            return
        queue = self.queue_class(as_text(origin), connection=self.connection, job_class=self.job_class,
                                 serializer=self.serializer)
        hand_back(self.connection, queue, job_id, execution.id, self.name, self.max_rescues)

    # RQ change: a cold shutdown kills the horse mid-job; the job goes back to its queue at once
    # (RQ leaves it STARTED until its registry entry expires, then fails it as abandoned).
    def request_force_stop(self, signum: int, frame: Any) -> None:
        job_id = self.get_current_job_id() if self.horse_pid else None
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            if job_id:
                self.hand_back_unfinished(as_text(job_id))
            raise

    def rescue_if_due(self) -> None:
        """Run :func:`rqplus.recovery.rescue_abandoned` when ``rescue_interval`` has passed."""
        if time.monotonic() - self._last_rescue < self.rescue_interval:
            return
        self._last_rescue = time.monotonic()
        try:
            rescue_abandoned(self.connection, self.queues, self.max_rescues)
        except RedisError as error:  # best effort: the next pass retries; the worker keeps working
            self.log.warning("Worker %s: rescue pass failed: %s", self.name, error)

    # RQ change: RQ removes the id from the intermediate list only for single-queue workers; the
    # reliable multi-queue fetch puts it there too, so it is always removed.
    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    # RQ change: the work-horse first checks the job's function against RQPLUS_JOB_MODULES; a
    # refused job fails (no retry) with the reason, before anything is imported or called.
    def perform_job(self, job: Job, queue: Queue) -> bool:
        reason = refusal(job)
        if reason is None:
            return super().perform_job(job, queue)
        self.log.error("Worker %s: refused job %s: %s", self.name, job.id, reason)
        self.connection.lrem(queue.intermediate_queue_key, 1, job.id)  # RQ's prepare step would read the job data
        stop_retries(job)  # a forbidden function stays forbidden
        self.handle_job_failure(job, queue, exc_string=reason)
        return False

    # RQ change: rescue dead workers' jobs before RQ's cleanup would fail them as abandoned.
    def clean_registries(self) -> None:
        self._last_rescue = 0.0
        self.rescue_if_due()
        super().clean_registries()

    # RQ change: a clean stop also drops the liveness keys (nothing of this worker to rescue).
    def register_death(self) -> None:
        super().register_death()
        mark_stopped(self.connection, self.name)

    @staticmethod
    def durability_policy() -> str:
        """``$RQPLUS_DURABILITY``: ``strict`` (refuse to start), ``warn`` (default: log) or ``off``."""
        policy = os.environ.get(DURABILITY_POLICY_ENV, "warn").strip().lower()
        if policy not in DURABILITY_POLICIES:
            raise ValueError(f"{DURABILITY_POLICY_ENV}={policy!r}: expected one of {', '.join(DURABILITY_POLICIES)}")
        return policy

    def check_durability(self) -> None:
        """Judge Redis now; log problems (``warn``) or raise ``DurabilityError`` (``strict``).

        Logs when the verdict changes since the last check.
        """
        policy = self.durability_policy()
        if policy == "off":
            return
        report = check(self.connection)
        if policy == "strict" and not report.ok:
            raise DurabilityError(report.problems)
        if report.ok != self.durable:
            for problem in report.problems:
                self.log.warning("Redis is not durable: %s", problem)
            if report.ok and self.durable is False:
                self.log.info("Redis is durable again")
        self.durable = report.ok

    # RQ change: the durability check runs first, so under `strict` a refused worker writes no key;
    # a queue name Redis has never seen is reported (a typo would otherwise wait silently forever).
    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        self.check_durability()
        super().bootstrap(*args, **kwargs)
        known = {key.decode() for key in self.connection.smembers(self.queue_class.redis_queues_keys)}
        for queue in self.queues:
            if queue.key not in known:
                self.log.warning("Worker %s: queue %r is unknown to Redis (nothing was ever enqueued to it): "
                                 "waiting for it anyway; check the name", self.name, queue.name)

    # RQ change: every maintenance pass also re-judges durability and logs a change.
    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        self.check_durability()

    # RQ change: RQ's Worker constructs RQScheduler by name; this is the same start-up with
    # scheduler_class, so due jobs keep their priority.
    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        self.scheduler = self.scheduler_class(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
        )
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if burst:
            try:
                self.scheduler.register_birth()
                self.scheduler.enqueue_scheduled_jobs()
            finally:
                self.scheduler.release_locks()
                self.scheduler.register_death()
        else:
            self.scheduler.start()
