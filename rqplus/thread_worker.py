"""``rqplus.ThreadWorker``: up to N jobs at once, each in a thread of one worker process.

For I/O-bound jobs (network calls, databases): no fork per job, and while one job waits the others
run. Every job goes through RQ's own steps (its execution in the started registry, heartbeats,
timeouts, ``Retry``, callbacks, results, dependents) and rqplus's (priority order, allow-list,
rescue, durability guard), one :class:`~rq.executions.Execution` per running job, so ``rq info``,
rq-dashboard and rqplus's rescue see every one of them.

Usage::

    RQPLUS_CONCURRENCY=16 rq worker -w rqplus.ThreadWorker --queue-class rqplus.Queue emails

or from Python: ``rqplus.ThreadWorker(["emails"], connection=redis, concurrency=16).work()``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from base64 import b64encode
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any
from uuid import uuid4

from rq import Worker as RQWorker
from rq.command import parse_payload
from rq.defaults import UNSERIALIZABLE_RETURN_VALUE_PAYLOAD
from rq.executions import Execution
from rq.job import Job, JobStatus, Retry
from rq.logutils import blue, green
from rq.results import Result
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import current_timestamp, now, utcformat
from rq.worker import WorkerStatus

from rqplus.allowlist import refusal
from rqplus.compat import (EXECUTION_HOLDS_JOB_ID, ConcurrentCompat, execution_key_prefixes, rate_limited,
                           rq_signature)
from rqplus.exceptions import JobStopped
from rqplus.faults import TRANSIENT
from rqplus.queue import Queue
from rqplus.recovery import hand_back, put_back_unstarted
from rqplus.scripts import Finish, Start, finish_many, start_many
from rqplus.timeouts import ABANDON_GRACE, Watchdog, raise_in_thread
from rqplus.worker import Worker

#: Environment variable giving the jobs a ThreadWorker or AsyncWorker runs at once.
CONCURRENCY_ENV = "RQPLUS_CONCURRENCY"
#: Seconds a worker whose threads are nearly all busy waits for more to be free before it fetches.
FILL_WAIT = 0.005
#: Most successes recorded in one transaction.
SUCCESS_BATCH = 500


@dataclass(eq=False)
class Running:
    """One job this worker runs now: its execution, and who has claimed the right to record its end."""

    job: Job
    queue: Queue
    execution: Execution
    deadline: float | None  # time.monotonic() by which the job must have ended; None: no timeout
    claimed: bool = False
    ident: int | None = None  # the thread in the job's function, while it is there (see Watchdog)


def encoded_result(job: Job, return_value: Any) -> str:
    """``return_value`` as RQ's ``Result`` stores it: the job serializer's bytes in base64 ("" for None)."""
    if return_value is None:
        return ""
    try:
        serialized = job.serializer.dumps(return_value)
    except Exception:  # as RQ: a result that cannot be serialized is stored as a marker
        serialized = job.serializer.dumps(UNSERIALIZABLE_RETURN_VALUE_PAYLOAD)
    return b64encode(serialized).decode()


class DaemonThreads(Executor):
    """An executor whose threads are daemons, started on demand and reused, at most ``limit`` (None:
    one per task waiting). Daemons, unlike ``ThreadPoolExecutor``'s, never hold up the exit of a
    worker whose abandoned job still blocks its thread.

    Usage: ``DaemonThreads("rqplus-job").submit(print, "hi").result()``
    """

    def __init__(self, name: str, limit: int | None = None) -> None:
        self.name, self.limit = name, limit
        self._tasks: SimpleQueue[Callable[[], None]] = SimpleQueue()
        self._lock = threading.Lock()
        self._idle = self._threads = self._waiting = 0  # waiting: tasks queued with no thread set aside

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()

        def task() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:
                    future.set_exception(error)

        self._tasks.put(task)
        with self._lock:
            if self._idle:
                self._idle -= 1
                return future
            if self.limit is not None and self._threads >= self.limit:
                self._waiting += 1
                return future
            self._threads += 1
        threading.Thread(target=self._serve, name=f"{self.name}-{self._threads}", daemon=True).start()
        return future

    def lose_one(self) -> None:
        """One thread will not come back (its job was abandoned): allow one more."""
        with self._lock:
            if self.limit is not None:
                self.limit += 1

    def _serve(self) -> None:
        while True:
            self._tasks.get()()
            with self._lock:
                if self._waiting:
                    self._waiting -= 1
                else:
                    self._idle += 1


class ThreadWorker(ConcurrentCompat, Worker):
    """An ``rqplus.Worker`` running up to ``concurrency`` jobs at once in threads.

    The work loop (RQ's) fetches a job whenever a thread is free, blocking when the queues are
    empty; threads run the jobs; the loop beats for every running job. A job past its timeout is
    interrupted in its thread (see :class:`Watchdog`); one that still runs ``ABANDON_GRACE``
    seconds later (blocked in C code) is abandoned: recorded failed with ``JobTimeoutException``,
    its thread left to end on its own, its result ignored. Its siblings run on.

    Stop: the first SIGTERM/SIGINT stops fetching and lets running jobs finish; a second one hands
    every running job back to its queue (counted as a rescue) and exits.
    """

    concurrency = 8
    abandon_grace = ABANDON_GRACE
    death_penalty_class = TimerDeathPenalty  # for callbacks: RQ's alarm-based one works in the main thread only

    def __init__(self, *args: Any, concurrency: int | None = None, **kwargs: Any) -> None:
        chosen = os.environ.get(CONCURRENCY_ENV, self.concurrency) if concurrency is None else concurrency
        try:
            self.concurrency = int(chosen)
        except (TypeError, ValueError):
            raise ValueError(f"concurrency must be a whole number >= 1, got {chosen!r}") from None
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be a whole number >= 1, got {chosen!r}")
        self._running: dict[str, Running] = {}  # execution id -> the job it runs
        self._changed = threading.Condition()
        self._last_beat = time.monotonic()
        self._batching = True
        self._threads = DaemonThreads("rqplus-job")
        self.watchdog = Watchdog(self.abandon, self.abandon_grace)
        self.successes: SimpleQueue[tuple[Running, Any]] = SimpleQueue()
        self._recorder: threading.Thread | None = None
        self._registry_keys: dict[str, tuple[str, str]] = {}
        self._fetched: list[tuple[Job, Queue]] = []  # fetched with the job RQ's loop runs next
        super().__init__(*args, **kwargs)

    # -- the work loop's side ------------------------------------------------------------------

    # RQ change: RQ runs the job to its end here; this starts it with the jobs fetched beside it
    # (one round trip records their starts), and goes on fetching while jobs are ready and threads
    # free, for up to a second; then RQ's loop takes over again (its checks, and a blocking wait
    # when the queues are empty). Jobs fetched after a stop request go back unstarted.
    def execute_job(self, job: Job, queue: Queue) -> None:
        batch, until = [(job, queue), *self._fetched], time.monotonic() + 1.0
        self._fetched = []
        if self._stop_requested:
            for fetched, origin in batch:
                self.redis_call(put_back_unstarted, self.connection, origin, fetched.id)
            return
        while True:
            free = self.concurrency - len(self._running) - len(batch)
            if free > 0 and self._batching:
                batch += self.redis_call(self.queue_class.dequeue_many, self._ordered_queues, free, self.connection)
            if not batch:  # the queues are empty: RQ's loop waits for the next job
                return
            runs = self.record_starts(batch)
            with self._changed:
                self._running.update((run.execution.id, run) for run in runs)
            self.start(runs)
            self.wait_while(lambda: len(self._running) >= self.concurrency)
            with self._changed:  # a few ms more for a bigger batch, once most threads are busy
                self._changed.wait_for(lambda: len(self._running) <= self.concurrency * 7 // 8, FILL_WAIT)
            if not self._batching or self._stop_requested or time.monotonic() > until:
                return
            batch = []

    # RQ change: with --max-jobs, one job per fetch (RQ counts the jobs it fetches one by one).
    @rq_signature(RQWorker.work)
    def work(self, **arguments: Any) -> bool:
        self._batching = arguments.get("max_jobs") is None
        return super().work(**arguments)

    def record_starts(self, batch: list[tuple[Job, Queue]]) -> list[Running]:
        """Record the start of each job in ``batch``, in one transaction, with RQ's writes for it
        (``start_many``): its execution in the started registry, its status, start time and worker,
        out of the intermediate list. Redis faults are waited out; an attempt whose reply was lost
        is undone before the next.

        Usage: ``runs = worker.record_starts([(job, queue)])``
        """
        attempts = 0

        def attempt() -> list[Running]:
            nonlocal attempts
            if attempts:
                for job, _ in batch:
                    self.drop_unconfirmed_executions(job)
            attempts += 1
            stamp, ttl = now(), self.job_monitoring_interval + 60  # RQ's TTL for a job watched while it runs
            hash_prefix, registry_prefix = execution_key_prefixes()
            queues: dict[str, int] = {}
            keys: list[tuple[str, str]] = []
            jobs: list[Start] = []
            runs = []
            for job, queue in batch:
                if queue.name not in queues:
                    queues[queue.name] = len(queues)
                    keys.append((self.registry_keys(queue)[0], queue.intermediate_queue_key))
                execution = Execution(uuid4().hex, job.id, self.connection, worker_name=self.name)
                execution.created_at = execution.last_heartbeat = stamp
                execution._job = job
                job.worker_name, job.last_heartbeat, job.started_at = self.name, stamp, stamp
                job._status = JobStatus.STARTED
                jobs.append(Start(job.id, job.key, queues[queue.name], execution.id,
                                  f"{hash_prefix}{job.id}:{execution.id}", f"{registry_prefix}{job.id}"))
                timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT
                runs.append(Running(job, queue, execution, None if timeout == -1 else time.monotonic() + timeout))
            with self.connection.pipeline() as pipeline:
                start_many(pipeline, stamp.timestamp(), utcformat(stamp), self.name, ttl, self.execution_index,
                           EXECUTION_HOLDS_JOB_ID, keys, jobs)
                self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
                self.heartbeat(ttl, pipeline=pipeline)
                pipeline.execute()
            return runs

        runs = self.redis_call(attempt)
        started = getattr(self, "executions", None)  # rq 3.0's index of the worker's executions
        if started is not None:
            started.update((run.execution.id, run.execution) for run in runs)
        return runs

    @property
    def execution_index(self) -> str:
        """The key of rq 3.x's set of this worker's executions ("" on rq 2.12: none)."""
        return getattr(self, "executions_key", "")

    def registry_keys(self, queue: Queue) -> tuple[str, str]:
        """``queue``'s started and finished registry keys (RQ builds both objects at each use)."""
        keys = self._registry_keys.get(queue.name)
        if keys is None:
            keys = self._registry_keys[queue.name] = (queue.started_job_registry.key, queue.finished_job_registry.key)
        return keys

    def start(self, runs: list[Running]) -> None:
        """Run each job of ``runs`` to its end in a thread (AsyncWorker: on its event loop)."""
        for run in runs:
            self._threads.submit(self.perform, run)

    def wait_while(self, busy: Any) -> None:
        """Block while ``busy()`` is true, beating for this worker and its running jobs when due."""
        while True:
            with self._changed:
                if not busy():
                    return
                self._changed.wait(timeout=1.0)
            self.tend()

    def tend(self) -> None:
        """Heartbeats for this worker and its running jobs, when due."""
        if time.monotonic() - self._last_beat >= min(self.job_monitoring_interval, self.rescue_interval):
            self.heartbeat()

    # RQ change: RQ's loop beats after each job; here at most twice a second (the TTLs it renews
    # are 7 s and more), as a batch of jobs starts and ends in less. The rescue pass stays on time.
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is None and time.monotonic() - self._last_beat < 0.5:
            self.rescue_if_due()
            return
        super().heartbeat(timeout, pipeline)

    # RQ change: a beat also covers every running job (RQ's work-horse monitor beats for its one
    # job); one round trip for all of them.
    def _beat(self, timeout: int | None) -> None:
        self._last_beat = time.monotonic()
        running = list(self._running.values())
        if not running:
            return super()._beat(timeout)
        ttl = self.job_monitoring_interval + 60
        with self.connection.pipeline(transaction=False) as pipeline:
            super().heartbeat(ttl, pipeline)
            for run in running:
                run.execution.heartbeat(run.job.started_job_registry, ttl, pipeline=pipeline)
                run.job.heartbeat(now(), ttl, pipeline=pipeline, xx=True)
            pipeline.execute()

    # RQ change: the worker reads as busy while any of its jobs runs (RQ's loop marks it idle
    # whenever it waits for the next job, which this worker does while others run).
    # Unchanged, the state is not written again.
    def set_state(self, state: str, pipeline: Any = None) -> None:
        if state == WorkerStatus.IDLE and self._running:
            state = WorkerStatus.BUSY
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline)

    # RQ change: before the worker deregisters (a stop, the end of a burst), its running jobs end.
    def teardown(self) -> None:
        self.wait_while(lambda: bool(self._running))
        super().teardown()

    # RQ change: RQ fetches one job per call (a blocking move, then the job's hash); here as many
    # ready jobs as there are free threads, their hashes with them, in one round trip, waiting
    # (one blocking command, no polling) when none is ready. In burst mode, empty queues end the
    # run only once the running jobs have ended (they may enqueue more: dependents, retries).
    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        return self.loop_step(self._dequeue_batch, timeout, max_idle_time)

    def _dequeue_batch(self, timeout: int | None, max_idle_time: int | None) -> tuple[Job, Queue] | None:
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_since = time.monotonic()
        while True:
            self.heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            wait = timeout
            if timeout is not None and max_idle_time is not None:
                wait = min(timeout, math.ceil(max_idle_time - (time.monotonic() - idle_since)))
                if wait <= 0:
                    return None
            free = max(1, self.concurrency - len(self._running)) if self._batching else 1
            batch = self.queue_class.dequeue_many(self._ordered_queues, free, self.connection, timeout=wait)
            if batch:
                break
            if timeout is None:
                if not self._running:
                    return None
                self.wait_while(lambda: bool(self._running))
        for job, queue in batch:
            self.log.info("Worker %s: %s: %s", self.name, green(queue.name), job.id)
        self.reorder_queues(reference_queue=batch[0][1])
        self._fetched = batch[1:]
        return batch[0]

    # RQ change: a cold shutdown hands every running job back to its queue at once (RQ kills its
    # one work-horse; rqplus.Worker hands that job back).
    def request_force_stop(self, signum: int, frame: Any) -> None:
        try:
            super().request_force_stop(signum, frame)
        except SystemExit:
            for run in list(self._running.values()):
                if self.claim(run):
                    try:
                        hand_back(self.connection, run.queue, run.job.id, run.execution.id, self.name,
                                  self.max_rescues)
                    except TRANSIENT as error:
                        self.log.warning("Worker %s: could not hand back job %s (%s): left to the rescue by a "
                                         "live worker", self.name, run.job.id, error)
                    self.release(run)
            raise

    # RQ change: RQ's stop-job command matches the worker's one current job and kills its
    # work-horse; here it matches any job the worker runs, and stops it in its thread (see stop).
    def handle_payload(self, message: Any) -> None:
        payload = parse_payload(message)
        if payload.get("command") != "stop-job":
            return super().handle_payload(message)
        self._stopped_job_id = payload.get("job_id")
        self.kill_horse()

    # RQ change: there is no work-horse to kill (RQ's kill_horse would signal this worker's own
    # process group): the job named by the stop request is stopped in its thread instead.
    def kill_horse(self, sig: Any = None) -> None:
        runs = [run for run in list(self._running.values()) if run.job.id == self._stopped_job_id]
        if not runs:
            self.log.warning("Worker %s: not running job %s, stop request ignored", self.name, self._stopped_job_id)
        for run in runs:
            self.log.info("Worker %s: stopping job %s on request", self.name, run.job.id)
            self.stop(run)

    def stop(self, run: Running) -> None:
        """Stop ``run``'s job: ``JobStopped`` raised in its thread (a thread blocked in C code sees
        it when the call returns)."""
        with self.watchdog.lock:
            if run.ident is not None:
                raise_in_thread(run.ident, JobStopped)

    # -- a job's side ---------------------------------------------------------------------------

    def claim(self, run: Running) -> bool:
        """Take the right to record ``run``'s end; False if someone else (abandon, hand-back) has it."""
        with self._changed:
            if run.claimed:
                return False
            run.claimed = True
            return True

    def release(self, run: Running) -> None:
        """``run`` has ended: free its place."""
        with self._changed:
            self._running.pop(run.execution.id, None)
            self._changed.notify_all()

    def perform(self, run: Running) -> None:
        """Run ``run``'s job in this thread, as RQ's ``perform_job`` does, and record its end."""
        job, handed_over = run.job, False
        try:
            if not self.begin(run):
                return
            try:
                return_value = self.call_in_thread(run)
            except BaseException:
                handed_over = self.end(run, exc_info=sys.exc_info())
            else:
                handed_over = self.end(run, return_value=return_value)
        except Exception:  # the bookkeeping itself failed: the job stays held, for the rescue
            self.log.exception("Worker %s: recording job %s failed", self.name, job.id)
        finally:
            if not handed_over:
                self.release(run)

    def call_in_thread(self, run: Running) -> Any:
        """Call ``run``'s function in this thread (RQ's ``job.perform()``), watched for its timeout."""
        self.watchdog.watch(run)
        try:
            return run.job.perform()
        finally:
            self.watchdog.unwatch(run)

    def begin(self, run: Running) -> bool:
        """In ``run``'s thread, before the call: False (and the job failed) if the allow-list refuses it."""
        job, queue = run.job, run.queue
        self.bind(run)
        reason = refusal(job)
        if reason is not None:
            if self.claim(run):
                self.refuse(job, queue, reason, **self.execution_argument(run.execution))
            return False
        job.started_at = now()
        return True

    def end(self, run: Running, return_value: Any = None, exc_info: Any = None) -> bool:
        """Record ``run``'s outcome, unless it was abandoned or handed back. A plain success (see
        :meth:`batchable`) is handed to the thread that records successes in batches: True then
        (that thread frees the job's place); else RQ's own steps record it here.
        """
        if not self.claim(run):
            self.log.warning("Worker %s: job %s ended after it was abandoned or handed back; its outcome is "
                             "dropped", self.name, run.job.id)
            return False
        if exc_info is None and self.batchable(run.job, return_value):
            run.job.ended_at, run.job._result = now(), return_value
            self.successes.put((run, return_value))
            if self._recorder is None:
                self._recorder = threading.Thread(target=self._record_successes, name="rqplus-results", daemon=True)
                self._recorder.start()
            return True
        self.record_end(run, return_value, exc_info)
        return False

    def record_end(self, run: Running, return_value: Any = None, exc_info: Any = None) -> None:
        """RQ's own end of a job: ``Retry``, callbacks, dependents, result, failure."""
        self.bind(run)
        if exc_info is None:
            try:
                self.finalize_success(run.job, run.queue, run.execution, return_value)
                return
            except Exception:  # as RQ: a result that cannot be saved fails the job
                exc_info = sys.exc_info()
        self.finalize_failure(run.job, run.queue, run.execution, exc_info)

    def batchable(self, job: Job, return_value: Any) -> bool:
        """True for a success RQ records with writes alone: no ``Retry`` returned, no success
        callback, webhook, repeat or rate limit, a result kept (dependents are looked for as the
        batch is written)."""
        return not (isinstance(return_value, Retry) or job._success_callback_name or getattr(job, "webhooks", None)
                    or (job.repeats_left or 0) > 0 or rate_limited(job)
                    or job.get_result_ttl(self.default_result_ttl) == 0)

    def _record_successes(self) -> None:
        while True:
            batch = [self.successes.get()]
            while len(batch) < SUCCESS_BATCH and not self.successes.empty():
                batch.append(self.successes.get())
            try:
                for run, return_value in self.redis_call(self.record_successes, batch):
                    self.record_end(run, return_value)
            except Exception:  # the jobs stay held, for the rescue
                self.log.exception("Worker %s: recording %d finished jobs failed", self.name, len(batch))
            finally:
                for run, _ in batch:
                    self.release(run)

    def record_successes(self, batch: list[tuple[Running, Any]]) -> list[tuple[Running, Any]]:
        """Record the successes in ``batch`` in one call (``finish_many``) with the writes of
        RQ's ``handle_execution_ended`` and ``handle_job_success`` for each; return those left to
        RQ's own steps: jobs with dependents (RQ enqueues them).

        Usage: ``left = worker.record_successes([(run, return_value)])``
        """
        hash_prefix, registry_prefix = execution_key_prefixes()
        jobs: list[Finish] = []
        for run, return_value in batch:
            job, execution = run.job, run.execution
            started, finished = self.registry_keys(run.queue)
            keys = (job.key, job.dependents_key, job.dependencies_key, Result.get_key(job.id), finished, started,
                    f"{hash_prefix}{job.id}:{execution.id}", f"{registry_prefix}{job.id}")
            jobs.append(Finish(job.id, keys, execution.id, repr(execution.created_at.timestamp()),
                               repr(job.ended_at.timestamp()), job.get_result_ttl(self.default_result_ttl),
                               encoded_result(job, return_value), utcformat(job.ended_at),
                               repr((job.ended_at - job.started_at).total_seconds())))
        left_positions = set(finish_many(self.connection, current_timestamp(), utcformat(now()), self.name, self.key,
                                         self.execution_index, jobs))
        started_executions = getattr(self, "executions", {})
        for position, (run, _) in enumerate(batch):
            if position not in left_positions:
                run.job._status = JobStatus.FINISHED
                started_executions.pop(run.execution.id, None)
                self.log.info("Worker %s: %s: %s (%s)", self.name, green(run.job.origin), blue("Job OK"), run.job.id)
        return [batch[position] for position in sorted(left_positions)]

    def abandon(self, run: Running) -> None:
        """Record a job still running far past its timeout as failed; its thread runs on unwatched."""
        if not self.claim(run):
            return
        self._threads.lose_one()
        self.log.error("Worker %s: job %s still runs %.0f s past its timeout: abandoned, recorded failed",
                       self.name, run.job.id, self.abandon_grace)
        error = JobTimeoutException(f"Task exceeded maximum timeout value ({run.job.timeout} seconds) and did not "
                                    f"stop within {self.abandon_grace:g} s: abandoned")
        try:
            self.bind(run)
            self.finalize_failure(run.job, run.queue, run.execution, (JobTimeoutException, error, None))
        finally:
            self.release(run)

