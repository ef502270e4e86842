"""``rqplus.Worker``: the one worker base of rqplus (thread and asyncio variants will extend it).

Usage::

    rq worker -w rqplus.Worker --queue-class rqplus.Queue emails payments

or from Python: ``rqplus.Worker(["emails"], connection=redis).work()``.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue as RQQueue
from rq import Worker as RQWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.utils import as_text, utcformat

from rqplus.allowlist import refusal
from rqplus.compat import WorkerCompat, rq_signature
from rqplus.durability import check
from rqplus.exceptions import DurabilityError, WorkLoopError
from rqplus.faults import MAX_WAIT, TRANSIENT, wait_out
from rqplus.functions import with_functions
from rqplus.job import judged_job_class
from rqplus.queue import Queue, reposition_admitted
from rqplus.recovery import hand_back, mark_alive, mark_stopped, rescue_abandoned, worker_identity
from rqplus.retry import stop_retries
from rqplus.scheduler import PriorityScheduler
from rqplus.serializers import worker_serializer

#: Environment variable choosing what a worker does on a non-durable Redis: strict, warn or off.
DURABILITY_POLICY_ENV = "RQPLUS_DURABILITY"
DURABILITY_POLICIES = ("strict", "warn", "off")
T = TypeVar("T")


class Worker(WorkerCompat, RQWorker):
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
    # RQ change: wait at most 5 s between two attempts to reach Redis (RQ: 60 s), so that work
    # resumes within seconds of a Redis restart
    max_connection_wait_time = MAX_WAIT
    _last_rescue = 0.0
    _fatal: Exception | None = None  # the unexpected error RQ's work loop stopped on, if any

    @rq_signature(RQWorker.__init__)
    def __init__(self, *, max_rescues: int | None = None, rescue_interval: int | None = None,
                 **arguments: Any) -> None:
        env = os.environ
        self.max_rescues = int(env.get("RQPLUS_MAX_RESCUES", self.max_rescues)) if max_rescues is None else max_rescues
        self.rescue_interval = (int(env.get("RQPLUS_RESCUE_INTERVAL", self.rescue_interval))
                                if rescue_interval is None else rescue_interval)
        if self.max_rescues < 0 or self.rescue_interval < 1:
            raise ValueError("max_rescues must be >= 0 and rescue_interval >= 1 second")
        self.identity = worker_identity(type(self), self.concurrency)
        super().__init__(**arguments)
        # RQ change: RQ's own scripts (its scheduler's locks, rate limits) run as functions of
        # rqplus's library (rqplus.functions), on this connection and on those RQ makes from it.
        with_functions(self.connection)
        # RQ change: job data is read with the restricted unpickler and job functions resolve
        # through the allow-list (RQ: pickle.loads and import_attribute), in every queue's fetch too
        # (on copies of the queues: a Queue object the caller passed in keeps its own classes)
        self.serializer = worker_serializer(self.serializer)
        self.job_class = judged_job_class(self.job_class)
        # RQ change: a stock rq.Queue as queue class (RQ's CLI default without --queue-class, and all
        # that `rq worker-pool` passes on rq 2.12) becomes rqplus.Queue, and so do stock queues given:
        # a stock queue would put retried jobs at the tail and fetch several queues unreliably.
        if self.queue_class is RQQueue:
            self.queue_class = Queue
        self.queues = [self.own_queue(queue) for queue in self.queues]
        self._ordered_queues = self.queues[:]
        for queue in self.queues:
            queue.serializer, queue.job_class = self.serializer, self.job_class

    def own_queue(self, queue: RQQueue) -> RQQueue:
        """A copy of ``queue`` for this worker; a stock ``rq.Queue`` becomes one of ``queue_class``.

        Usage: ``worker.own_queue(rq.Queue("emails", connection=redis))  # -> rqplus.Queue('emails')``
        """
        if type(queue) is not RQQueue or self.queue_class is RQQueue:
            return copy.copy(queue)
        return self.queue_class(name=queue.name, connection=self.connection, job_class=self.job_class,
                                serializer=self.serializer, death_penalty_class=self.death_penalty_class)

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

    def redis_call(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(*args, **kwargs)``, made again with backoff while Redis is unreachable, loading or
        out of memory (see :func:`rqplus.faults.wait_out`); a stop request still interrupts it.

        Usage: ``worker.redis_call(worker.connection.hset, worker.key, "state", "idle")``
        """
        return wait_out(lambda: call(*args, **kwargs), self.log, f"Worker {self.name}",
                        factor=self.exponential_backoff_factor, cap=self.max_connection_wait_time)

    def loop_step(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A step of RQ's work loop through :meth:`redis_call`; an unexpected error (not a stop
        request) is kept for :meth:`work`, which then ends non-zero.

        Usage: ``worker.loop_step(worker.check_durability)``
        """
        try:
            return self.redis_call(call, *args, **kwargs)
        except StopRequested:
            raise
        except Exception as error:
            self._fatal = error
            raise

    # RQ change: RQ's loop logs an unexpected error and returns as after a requested stop (`rq
    # worker` exits 0); here the error is raised again after RQ's teardown, so the exit code is 1.
    @rq_signature(RQWorker.work)
    def work(self, **arguments: Any) -> bool:
        self._fatal = None
        worked = super().work(**arguments)
        if self._fatal is not None:
            raise WorkLoopError(f"Worker {self.name} stopped on an unexpected error: {self._fatal!r}") from self._fatal
        return worked

    # RQ change: Redis faults are waited out in every step of the work loop; RQ retries only the
    # fetch itself and quits on the rest (the suspension check, the idle-state write, the heartbeat
    # right after a fetch, maintenance, LOADING, out of memory, a socket timeout).
    def check_for_suspension(self, burst: bool) -> None:
        self.loop_step(super().check_for_suspension, burst)

    # RQ change: see check_for_suspension.
    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        return self.loop_step(super().dequeue_job_and_maintain_ttl, timeout, max_idle_time)

    # RQ change: see check_for_suspension (a state change inside a step's pipeline is the step's).
    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline)
        else:
            self.redis_call(super().set_state, state)

    # RQ change: recorded for `rq info` only, and called from a signal handler: skipped while
    # Redis cannot take it (RQ's raises inside the handler, and the worker quits).
    def set_shutdown_requested_date(self) -> None:
        try:
            super().set_shutdown_requested_date()
        except TRANSIENT as error:
            self.log.warning("Worker %s: could not record the shutdown request (%s)", self.name, error)

    # RQ change: every heartbeat also refreshes the liveness key read by rescuers elsewhere, in
    # the same round trip (RQ sends its own two heartbeat commands one by one); Redis faults are
    # waited out (RQ's loop quits on a failed heartbeat).
    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None:  # part of job bookkeeping, executed by the caller
            super().heartbeat(timeout, pipeline)
            mark_alive(pipeline, self.name, self.liveness_ttl, self.identity)
            return
        self.loop_step(self._beat, timeout)
        self.rescue_if_due()

    def _beat(self, timeout: int | None) -> None:
        with self.connection.pipeline(transaction=False) as own:
            super().heartbeat(timeout, own)
            mark_alive(own, self.name, self.liveness_ttl, self.identity)
            own.execute()

    # RQ change: a busy worker rescues too (from its monitoring loop, while the horse runs), and
    # Redis unreachable while the horse runs is not fatal (RQ's worker quits and leaves the horse
    # running unwatched): the beat is skipped; the liveness key outlasts a few missed beats.
    # (rq 3.0 passes the running execution too)
    @rq_signature(RQWorker.maintain_heartbeats)
    def maintain_heartbeats(self, job: Job, **execution: Any) -> None:
        try:
            super().maintain_heartbeats(job, **execution)
        except TRANSIENT as error:
            self.log.warning("Worker %s: heartbeat for job %s failed, Redis unavailable (%s); the job keeps running",
                             self.name, job.id, error)
            return
        self.rescue_if_due()

    # RQ change: Redis faults around a job are waited out instead of quitting. The work-horse keeps
    # the job's outcome and writes it once Redis serves again (see handle_job_success); only a job
    # whose horse ended without writing it (killed, crashed: its outcome is unknown) is handed back.
    def execute_job(self, job: Job, queue: Queue) -> None:
        self.loop_step(self._execute_or_hand_back, job, queue)

    def _execute_or_hand_back(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except TRANSIENT as error:  # only once the horse has ended: the start before the fork is waited out
            self.log.warning("Worker %s: Redis unavailable after the work-horse of job %s ended (%s)", self.name,
                             job.id, error)
            self._horse_pid = 0
            self.redis_call(self.hand_back_unfinished, job.id)

    # RQ change: the execution is recorded before the fork; Redis faults are waited out there too.
    # Each attempt records a new execution id, so one whose reply was lost (written, then Redis
    # died) is deleted before the next: it would stay in the started registry for good.
    def prepare_execution(self, job: Job) -> Any:
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            if attempts:
                self.drop_unconfirmed_executions(job)
            attempts += 1
            return super(Worker, self).prepare_execution(job)

        return self.redis_call(attempt)

    def drop_unconfirmed_executions(self, job: Job) -> None:
        """Delete ``job``'s started-registry entries recorded by this worker, which runs none of them yet.

        Usage: ``worker.drop_unconfirmed_executions(job)  # before recording the execution again``
        """
        with self.connection.pipeline() as pipeline:
            for entry in map(as_text, self.connection.zrange(job.started_job_registry.key, 0, -1)):
                job_id, _, execution_id = entry.rpartition(":")
                execution = Execution(execution_id, job_id, self.connection, worker_name=self.name)
                if job_id == job.id and as_text(self.connection.hget(execution.key, "worker_name")) == self.name:
                    execution.delete(job, pipeline)
            pipeline.execute()
        started = getattr(self, "executions", {})  # rq 3.0 keeps each execution it started, written or not
        for execution_id in [key for key, execution in started.items() if execution.job_id == job.id]:
            del started[execution_id]

    # RQ change: the work-horse waits out Redis faults while it records the job's start and end.
    # RQ's horse takes such a fault for the job's own failure or dies with the outcome unwritten,
    # and the job then ran a second time after its rescue; here the outcome is kept in the horse
    # and written once Redis serves again, so a job that ran is recorded finished or failed, once.
    @rq_signature(RQWorker.handle_execution_ended)
    def handle_execution_ended(self, **arguments: Any) -> None:
        self.redis_call(super().handle_execution_ended, **arguments)

    # RQ change: see handle_execution_ended (the signatures differ between rq 2.12 and 3.0).
    # (rq 3.0: the job's end frees its RateLimit slot and admits waiting jobs at the tail: see
    # _record_end)
    @rq_signature(RQWorker.handle_job_success)
    def handle_job_success(self, job: Job, **arguments: Any) -> None:
        self._record_end(super().handle_job_success, job, **arguments)

    # RQ change: see handle_execution_ended and handle_job_success.
    @rq_signature(RQWorker.handle_job_failure)
    def handle_job_failure(self, job: Job, **arguments: Any) -> Any:
        return self._record_end(super().handle_job_failure, job, **arguments)

    # RQ change: see handle_execution_ended and handle_job_success.
    @rq_signature(RQWorker.handle_job_retry)
    def handle_job_retry(self, job: Job, **arguments: Any) -> None:
        self._record_end(super().handle_job_retry, job, **arguments)

    def _record_end(self, handler: Callable[..., T], job: Job, **arguments: Any) -> T:
        since = utcformat(datetime.now(UTC))
        result = self.redis_call(handler, job, **arguments)
        self.redis_call(reposition_admitted, self.connection, job, since)
        return result

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
    # With Redis unavailable the stop goes on and the job is left to the rescue by a live worker.
    def request_force_stop(self, signum: int, frame: Any) -> None:
        execution = self.execution if self.horse_pid else None
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            if execution is not None:
                try:
                    self.hand_back_unfinished(execution.job_id)
                except TRANSIENT as error:
                    self.log.warning("Worker %s: could not hand back job %s (%s): left to the rescue by a live "
                                     "worker", self.name, execution.job_id, error)
            raise

    def rescue_if_due(self) -> None:
        """Run :func:`rqplus.recovery.rescue_abandoned` when ``rescue_interval`` has passed."""
        if time.monotonic() - self._last_rescue < self.rescue_interval:
            return
        self._last_rescue = time.monotonic()
        try:
            rescue_abandoned(self.connection, self.queues, self.max_rescues,
                             restart_grace=self.liveness_ttl + self.max_connection_wait_time)
        except RedisError as error:  # best effort: the next pass retries; the worker keeps working
            self.log.warning("Worker %s: rescue pass failed: %s", self.name, error)

    # RQ change: RQ removes the id from the intermediate list only for single-queue workers; the
    # reliable multi-queue fetch puts it there too, so it is always removed. Redis faults are
    # waited out (see handle_execution_ended): RQ's horse would fail the job on them.
    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        self.redis_call(super().prepare_job_execution, job, remove_from_intermediate_queue=True)

    # RQ change: the work-horse first resolves the job's function and callbacks through the
    # allow-list; a refused job fails (no retry) with the reason, and nothing of it is called.
    # (rq 3.0 passes the running execution, 2.12 keeps it on the worker: see rqplus.compat)
    @rq_signature(RQWorker.perform_job)
    def perform_job(self, job: Job, queue: Queue, **execution: Any) -> bool:
        reason = refusal(job)
        if reason is None:
            return super().perform_job(job, queue, **execution)
        self.refuse(job, queue, reason, **execution)
        return False

    def refuse(self, job: Job, queue: Queue, reason: str, **execution: Any) -> None:
        """Fail ``job`` (no retry) because the allow-list refused it; nothing of it is called.

        Usage: ``worker.refuse(job, queue, refusal(job))``
        """
        self.log.error("Worker %s: refused job %s: %s", self.name, job.id, reason)
        self.connection.lrem(queue.intermediate_queue_key, 1, job.id)  # RQ's prepare step would read the job data
        stop_retries(job)  # a forbidden function stays forbidden
        self.handle_job_failure(job, queue, exc_string=reason, **execution)

    # RQ change: rescue dead workers' jobs before RQ's cleanup would fail them as abandoned.
    def clean_registries(self) -> None:
        self._last_rescue = 0.0
        self.rescue_if_due()
        super().clean_registries()

    # RQ change: a clean stop also drops the liveness keys (nothing of this worker to rescue). With
    # Redis unavailable the stop goes on (its keys expire): an operator's stop always stops.
    def register_death(self) -> None:
        try:
            super().register_death()
            mark_stopped(self.connection, self.name)
        except TRANSIENT as error:
            self.log.warning("Worker %s: could not record its stop (%s); its keys expire by themselves", self.name,
                             error)

    # RQ change: Redis faults at start-up are waited out too (a worker started with its Redis).
    def register_birth(self) -> None:
        self.redis_call(super().register_birth)

    # RQ change: see register_birth.
    def subscribe(self) -> None:
        self.redis_call(super().subscribe)

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
    @rq_signature(RQWorker.bootstrap)
    def bootstrap(self, **arguments: Any) -> None:
        self.redis_call(self.check_durability)
        super().bootstrap(**arguments)
        known = {key.decode() for key in self.redis_call(self.connection.smembers, self.queue_class.redis_queues_keys)}
        for queue in self.queues:
            if queue.key not in known:
                self.log.warning("Worker %s: queue %r is unknown to Redis (nothing was ever enqueued to it): "
                                 "waiting for it anyway; check the name", self.name, queue.name)

    # RQ change: every maintenance pass also re-judges durability and logs a change; Redis faults
    # are waited out (see check_for_suspension).
    def run_maintenance_tasks(self) -> None:
        self.loop_step(super().run_maintenance_tasks)
        self.loop_step(self.check_durability)

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
