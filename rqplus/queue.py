"""``rqplus.Queue``: an RQ queue whose jobs run most-urgent first.

The most urgent jobs (up to ``rqplus.scripts.WINDOW``) wait in RQ's LIST at ``rq:queue:<name>``,
kept in run order at insert time by rqplus's Lua (:mod:`rqplus.scripts`); the rest wait in one
backlog list per priority level (see :mod:`rqplus.priority`), and every rqplus pop refills the
list. So an enqueue costs the same at any backlog, and RQ's dequeue, ``rq info`` and rq-dashboard
read one ordinary, already sorted list; this class counts and lists the backlog as part of the queue.

Usage::

    from rqplus import Queue
    q = Queue("emails", connection=redis)
    q.enqueue(send_email, "a@example.com", "Hi", "...", priority=0)   # runs before priority 5
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq import Queue as RQQueue
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.exceptions import DequeueTimeout, InvalidJobOperation, NoSuchJobError
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job, JobStatus
from rq.queue import EnqueueData
from rq.timeouts import BaseDeathPenalty
from rq.utils import as_text, current_timestamp, parse_timeout, str_to_date, utcformat

from rqplus.compat import RateLimitRegistry, rate_limited, rq_signature
from rqplus.defaults import DEFAULT_PRIORITY, MAX_PAYLOAD_BYTES

from rqplus.durability import require_durable
from rqplus.faults import REDIS_DOWN, TRANSIENT, wait_out
from rqplus.functions import with_functions
from rqplus.limits import check_options, check_queue_name
from rqplus.priority import LEVELS, backlog_key, priority_of, window_counts_key, window_key, with_priority
from rqplus.scripts import (MAX_BATCH, Enqueued, QueueKeys, enqueue, fetch_keys, fetch_many, merge_backlog,
                            priority_insert, quarantine, queue_keys, refill, reliable_fetch, requeue_failed, wake_key)
from rqplus.task import task_defaults

#: Failed jobs requeued per function call by ``Queue.requeue_failed_many``.
REQUEUE_BATCH = MAX_BATCH
#: Jobs written per function call by ``Queue.enqueue_many``: other clients wait at most about 20 ms
#: for one call (bench/bench_hold.py; docs/security.md, "Function library"), whatever the batch.
ENQUEUE_MANY_CHUNK = 500

#: The job hash fields RQ parses when it loads a job, each with a parser of its text: a job whose
#: hash fails one of them is quarantined with a reason naming the field.
JOB_FIELDS = {
    "created_at": str_to_date, "enqueued_at": str_to_date, "started_at": str_to_date, "ended_at": str_to_date,
    "last_heartbeat": str_to_date, "timeout": parse_timeout, "result_ttl": int, "failure_ttl": int,
    "status": JobStatus,
}


def check_job_function(func: object) -> None:
    """Raise ``TypeError`` unless ``func`` is a callable or a dotted path (RQ fails later, and less clearly).

    Usage: ``check_job_function("tasks.emails.send_email")``
    """
    if not (isinstance(func, str) or callable(func)):
        raise TypeError(f"the job function (enqueue's first argument `f`, or `func`) must be a callable or its "
                        f"dotted path as a str, not {type(func).__name__}: {func!r}")


class Queue(RQQueue):
    """An RQ ``Queue`` with per-job priority: 0 (most urgent) to 9 (least urgent), default 5.

    Every way in takes ``priority=``: ``enqueue``, ``enqueue_call``, ``enqueue_at``,
    ``enqueue_in`` and ``prepare_data`` (for ``enqueue_many``). ``meta={"priority": N}`` works too.
    Jobs of equal priority run first-in first-out; ``at_front=True`` puts a job ahead of the others
    of its own priority, never ahead of a more urgent one.

    ``durable=True`` refuses to create jobs while Redis is not durable (see
    :mod:`rqplus.durability`): enqueue raises ``rqplus.DurabilityError`` and writes nothing.
    """

    #: Seconds an enqueue keeps re-sending while Redis is unreachable: its reply may be lost after
    #: Redis wrote it, and the enqueue script recognises a re-sent enqueue (no second job).
    enqueue_retry_seconds: float = 30.0

    # RQ change: ``durable`` (see above). Any name builds a queue object, as RQ's own code does
    # (``Queue(job.origin)``); an odd name is refused at enqueue (see create_job). The connection runs
    # RQ's scripts as functions of rqplus's library (rqplus.functions.with_functions).
    @rq_signature(RQQueue.__init__)
    def __init__(self, *, durable: bool = False, **arguments: Any) -> None:
        super().__init__(**arguments)
        with_functions(self.connection)
        self.durable = durable
        self._pushing: dict[str, int] = {}  # job id -> priority, for push_job_id (RQ passes it the id only)
        self._bulk: dict[int, list[Enqueued]] = {}  # id(pipeline) -> jobs to write, see enqueue_many
        self._checked_name: str | None = None  # see create_job

    @property
    def wake_key(self) -> str:
        """The list that wakes multi-queue workers when a job is pushed here."""
        return wake_key(self.name)

    @property
    def window_key(self) -> str:
        """The hash of priorities of the jobs in this queue's RQ list (see :mod:`rqplus.priority`)."""
        return window_key(self.name)

    @property
    def backlog_keys(self) -> list[str]:
        """This queue's backlog lists, most urgent level first (see :mod:`rqplus.priority`)."""
        return [backlog_key(self.name, level) for level in LEVELS]

    @property
    def _order_keys(self) -> QueueKeys:
        return queue_keys(self.name, self.key)

    def _insert(self, connection: Redis | Pipeline, jobs: Iterable[tuple[str, int, bool, bool]]) -> int | Pipeline:
        return priority_insert(connection, self._order_keys, self.job_class.redis_job_namespace_prefix,
                               DEFAULT_PRIORITY, jobs)

    def _lengths(self) -> tuple[list[str], list[int]]:
        """The lists holding this queue's jobs, in run order (RQ's list, then each backlog level),
        and their lengths, in one round trip."""
        keys = [self.key, *self.backlog_keys]
        with self.connection.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.llen(key)
            return keys, pipe.execute()

    # RQ change: the backlog counts too (RQ: LLEN of the list alone).
    @property
    def count(self) -> int:
        return sum(self._lengths()[1])

    # RQ change: the slice runs on through the backlog, in run order (RQ: LRANGE of the list alone).
    def get_job_ids(self, offset: int = 0, length: int = -1) -> list[str]:
        """Ids of the queued jobs in run order, ``length`` of them from ``offset`` (-1: to the end).

        Usage: ``queue.get_job_ids(0, 20)  # the next 20 jobs to run``
        """
        if length == 0:
            return []
        keys, lengths = self._lengths()
        total = sum(lengths)
        start = max(offset + total if offset < 0 else offset, 0)
        stop = total + length + 1 if length < 0 else start + length
        with self.connection.pipeline(transaction=False) as pipe:
            position = 0
            for key, size in zip(keys, lengths):
                first, last = max(start, position), min(stop, position + size)
                if first < last:
                    pipe.lrange(key, first - position, last - position - 1)
                position += size
            return [as_text(job_id) for ids in pipe.execute() for job_id in ids]

    # RQ change: a job in the backlog has a position too (RQ: LPOS in the list alone).
    def get_job_position(self, job_or_id: Job | str) -> int | None:
        """The job's place in the run order (0: next), or None when it is not queued here.

        Usage: ``queue.get_job_position(job)  # -> 1200``
        """
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        with self.connection.pipeline(transaction=False) as pipe:
            for key in (self.key, *self.backlog_keys):
                pipe.lpos(key, job_id)
                pipe.llen(key)
            found = pipe.execute()
        before = 0
        for position, length in zip(found[0::2], found[1::2]):
            if position is not None:
                return before + position
            before += length
        return None

    # RQ change: the id is taken out of the backlog too.
    def remove(self, job_or_id: Job | str, pipeline: Pipeline | None = None) -> Any:
        job_id = job_or_id.id if isinstance(job_or_id, Job) else job_or_id
        pipe = pipeline if pipeline is not None else self.connection.pipeline()
        pipe.lrem(self.key, 1, job_id)
        pipe.hdel(self.window_key, job_id)
        for key in self.backlog_keys:
            pipe.lrem(key, 1, job_id)
        if pipeline is not None:
            return pipeline
        removed, _, *from_backlog = pipe.execute()
        return removed + sum(from_backlog)

    # RQ change: the backlog's ids are first appended to the list, so RQ's script deletes their jobs too.
    def empty(self) -> Any:
        merge_backlog(self.connection, self._order_keys, self.backlog_keys)
        return super().empty()

    # RQ change: the backlog lists and the window's priorities go with the queue.
    def delete(self, delete_jobs: bool = True) -> None:
        super().delete(delete_jobs=delete_jobs)
        self.connection.delete(self.window_key, window_counts_key(self.name), *self.backlog_keys)

    def enqueue(self, f: Any, *args: Any, priority: int | None = None, **kwargs: Any) -> Job:
        """Enqueue ``f(*args, **kwargs)`` at ``priority``; other options as in ``rq.Queue.enqueue``.

        ``priority`` is taken by rqplus: a job function with a ``priority`` parameter gets it
        through ``kwargs={"priority": ...}``, as RQ does for ``job_timeout``.

        Usage: ``queue.enqueue(send_email, "a@example.com", "Hi", "Hello", priority=0)``
        """
        check_job_function(f)
        kwargs["meta"] = with_priority(kwargs.get("meta"), priority)
        return super().enqueue(f, *args, **kwargs)

    @rq_signature(RQQueue.enqueue_call)
    def enqueue_call(self, *, priority: int | None = None, **arguments: Any) -> Job:
        """``rq.Queue.enqueue_call`` with a ``priority`` keyword; RQ's options positional or by name.

        Usage: ``queue.enqueue_call(func=report, args=(7,), priority=1)``
        """
        arguments["meta"] = with_priority(arguments.get("meta"), priority)
        return super().enqueue_call(**arguments)

    def enqueue_at(self, datetime: datetime, f: Any, *args: Any, priority: int | None = None, **kwargs: Any) -> Job:
        """Schedule a job for ``datetime``; when due it is queued at its priority (``enqueue_in`` too).

        Usage: ``queue.enqueue_at(datetime(2030, 1, 1, tzinfo=UTC), report, priority=2)``
        """
        check_job_function(f)
        kwargs["meta"] = with_priority(kwargs.get("meta"), priority)
        return super().enqueue_at(datetime, f, *args, **kwargs)

    @staticmethod
    @rq_signature(RQQueue.prepare_data)
    def prepare_data(*, priority: int | None = None, **arguments: Any) -> EnqueueData:
        """``rq.Queue.prepare_data`` with a ``priority`` keyword, for ``enqueue_many``.

        Usage: ``queue.enqueue_many([Queue.prepare_data(report, (1,), priority=0)])``
        """
        arguments["meta"] = with_priority(arguments.get("meta"), priority)
        check_options(arguments)
        return RQQueue.prepare_data(**arguments)

    # RQ change: RQ registers the queue (SADD rq:queues) in a round trip of its own, then saves the
    # job and pushes its id in a MULTI/EXEC; a plain enqueue here is one script (``ENQUEUE`` in
    # rqplus.scripts): it checks the queue and job keys before it writes (a refused enqueue writes
    # nothing), and it is re-sent while Redis is unreachable, up to ``enqueue_retry_seconds``,
    # without ever creating the job twice (RQ's MULTI, re-sent by redis-py, pushes the id twice).
    # RQ change too: a job created without create_job (rq-scheduler's Job.create) arrives here when
    # due, still SCHEDULED: it gets its function's @task defaults then, as create_job gives them.
    def enqueue_job(self, job: Job, pipeline: Pipeline | None = None, at_front: bool = False,
                    unique: bool = False) -> Job:
        declared = task_defaults(job.func_name) if job.get_status(refresh=False) == JobStatus.SCHEDULED else None
        if declared is not None:
            declared.fill_job(job)
        if pipeline is not None or unique or job._dependency_ids or not self._is_async or rate_limited(job):
            return super().enqueue_job(job, pipeline=pipeline, at_front=at_front, unique=unique)
        self.log.debug("Enqueueing job %s to queue %s (at_front=%s)", job.id, self.name, at_front)
        enqueued = [self._enqueued(job, at_front)]
        wait_out(lambda: self._write(self.connection, enqueued), self.log, f"Enqueue of job {job.id}", first=0.5,
                 faults=REDIS_DOWN, give_up_after=self.enqueue_retry_seconds)
        return job

    def _enqueued(self, job: Job, at_front: bool) -> Enqueued:
        """``job`` prepared for the queue as RQ prepares it, with RQ's writes for it, to be written
        (with its ordered insert) by one call of the enqueue function."""
        self._prepare_for_queue(job)
        return Enqueued(job.key, job.id, priority_of(job), at_front, utcformat(job.enqueued_at),
                        self._recorded_writes(job))

    def _write(self, connection: Redis | Pipeline, jobs: Sequence[Enqueued]) -> int | Pipeline:
        return enqueue(connection, self._order_keys, self.redis_queues_keys, self.job_class.redis_job_namespace_prefix,
                       DEFAULT_PRIORITY, jobs)

    def _recorded_writes(self, job: Job) -> list:
        """RQ's own writes that queue ``job`` (``_persist_job``), flattened for a script to replay."""
        recorder = self.connection.pipeline()  # never executed
        self._persist_job(job, recorder)
        writes = [word for command, _ in recorder.command_stack for word in (len(command), *command)]
        recorder.reset()
        return writes

    # RQ change: RQ saves every job and pushes its id in one MULTI/EXEC for the whole batch, which
    # holds Redis as long as it takes (0.5 to 1.2 s for 100,000 jobs, every other client waiting). Here the
    # jobs are created and checked first, as RQ does, then written ENQUEUE_MANY_CHUNK at a time, each
    # chunk one call of the enqueue function (each job's writes with its ordered insert: never half
    # of a job). Into a pipeline of the caller's, the same calls are queued (the caller's EXEC then
    # holds Redis for all of them, unless the pipeline is not a transaction). Jobs with dependencies,
    # and a synchronous queue's, take RQ's own path (it executes and reads mid-way).
    @rq_signature(RQQueue.enqueue_many)
    def enqueue_many(self, **arguments: Any) -> list[Job]:
        """``rq.Queue.enqueue_many``: jobs made by ``Queue.prepare_data`` (which takes ``priority=``).

        Usage: ``queue.enqueue_many([Queue.prepare_data(report, (n,), priority=n % 10) for n in range(1000)])``
        """
        arguments["job_datas"] = job_datas = list(arguments["job_datas"])
        if any(job_data.depends_on for job_data in job_datas) or not self._is_async:
            return super().enqueue_many(**arguments)
        pipeline = arguments.get("pipeline")
        recorder = arguments["pipeline"] = self.connection.pipeline()  # never executed: see _enqueue_async_job
        bulk = self._bulk[id(recorder)] = []
        try:
            jobs = super().enqueue_many(**arguments)
        finally:
            del self._bulk[id(recorder)]
            recorder.reset()
        for start in range(0, len(bulk), ENQUEUE_MANY_CHUNK):
            self._write(self.connection if pipeline is None else pipeline, bulk[start:start + ENQUEUE_MANY_CHUNK])
        return jobs

    # RQ change: every job is checked before anything is written: a queue name that can name a
    # queue, durations and job ids within bounds (see rqplus.limits), a validated priority in its
    # meta (default 5, so paths that bypass the keyword above are checked too), a function a
    # worker can import by name, arguments that serialize within the size limit, and for a
    # durable queue, a durable Redis.
    # (RQ finds bad arguments only while saving, after it has already registered the queue.)
    # Options the caller left None come from the function's @task defaults (rqplus.task), if any.
    @rq_signature(RQQueue.create_job)
    def create_job(self, **arguments: Any) -> Job:
        if self.name != self._checked_name:  # once per name, not per job of a bulk enqueue
            check_queue_name(self.name)
            self._checked_name = self.name
        check_job_function(arguments["func"])
        declared = task_defaults(arguments["func"])
        if declared is not None:
            declared.fill(arguments)
        check_options(arguments, default_timeout=self._default_timeout)
        arguments["meta"] = with_priority(arguments.get("meta"), None, DEFAULT_PRIORITY)
        job = super().create_job(**arguments)
        self._check_payload(job)
        if self.durable or (declared is not None and declared.durable):
            require_durable(self.connection)
        return job

    def _check_payload(self, job: Job) -> None:
        name = job.func_name
        if "<lambda>" in name or "<locals>" in name:
            raise ValueError(f"{name} cannot be imported by a worker: enqueue a module-level function")
        try:
            size = len(job.data)  # serializes now; the bytes are reused when the job is saved
        except Exception as error:
            raise TypeError(f"the arguments of {name} cannot be serialized with "
                            f"{getattr(self.serializer, '__name__', self.serializer)}: {error}") from error
        limit = int(os.environ.get("RQPLUS_MAX_PAYLOAD_BYTES", MAX_PAYLOAD_BYTES))
        if size > limit:
            raise ValueError(f"job {job.func_name} serializes to {size} bytes, over the {limit} byte limit "
                             "(RQPLUS_MAX_PAYLOAD_BYTES): store large inputs elsewhere and pass their key")

    # RQ change: RPUSH/LPUSH becomes the ordered insert (window or backlog, see rqplus.priority).
    def push_job_id(self, job_id: str, pipeline: Pipeline | None = None, at_front: bool = False) -> None:
        priority = self._pushing.get(job_id)
        push = (job_id, self.job_priority(job_id) if priority is None else priority, at_front, False)
        self._insert(pipeline if pipeline is not None else self.connection, [push])
        self.log.debug("Pushed job %s into %s in priority order", job_id, self.name)

    def job_priority(self, job_id: str) -> int:
        """The priority of job ``job_id`` (from its meta); the default for a job that is gone.

        Usage: ``queue.job_priority(job.id)  # -> 0``
        """
        job = self.fetch_job(job_id)
        return DEFAULT_PRIORITY if job is None else priority_of(job)

    # RQ change (rq 3.0): a rate-limited job waits as rate_limited, and RQ's admission script pushes
    # it at the tail; one admitted at once is moved to its priority's place.
    def _enqueue_rate_limited_job(self, job: Job, pipeline: Pipeline | None = None, at_front: bool = False) -> Job:
        since = utcformat(datetime.now(UTC))
        job = super()._enqueue_rate_limited_job(job, pipeline=pipeline, at_front=at_front)
        if pipeline is None:
            reposition_admitted(self.connection, job, since)
        return job

    # RQ change (rq 3.0): dependents made ready are pushed by RQ's ReadyJobRegistry with a stock
    # Queue (at the tail, no priority field); each is then moved to its priority's place.
    def enqueue_ready_jobs_by_queue(self, job_ids_by_queue_name: dict[str, list[str]]) -> None:
        super().enqueue_ready_jobs_by_queue(job_ids_by_queue_name)
        for name, job_ids in job_ids_by_queue_name.items():
            queue = self.__class__(name, connection=self.connection, job_class=self.job_class,
                                   serializer=self.serializer)
            for job in self.job_class.fetch_many(job_ids, connection=self.connection, serializer=self.serializer):
                if job is not None:
                    queue.reposition(job.id, at_front=bool(job.enqueue_at_front), priority=priority_of(job))

    # RQ change: push_job_id is told the job's priority; unique=True saves and pushes in RQ's own
    # Lua script (plain RPUSH/LPUSH), so the job is moved to its priority's place right after. Inside
    # enqueue_many (its recorder pipeline), the job is prepared and its writes recorded, as RQ would
    # write them, for enqueue_many to write in chunks.
    def _enqueue_async_job(
        self, job: Job, pipeline: Pipeline | None = None, at_front: bool = False, unique: bool = False
    ) -> Job:
        bulk = None if pipeline is None or unique else self._bulk.get(id(pipeline))
        if bulk is not None and job.get_status(refresh=False) != JobStatus.DEFERRED:
            bulk.append(self._enqueued(job, at_front))
            return job
        self._pushing[job.id] = priority_of(job)
        try:
            job = super()._enqueue_async_job(job, pipeline=pipeline, at_front=at_front, unique=unique)
        finally:
            self._pushing.pop(job.id, None)
        if unique:
            self.reposition(job.id, at_front=at_front, priority=priority_of(job))
        return job

    def reposition(self, job_id: str, at_front: bool = False, priority: int | None = None) -> bool:
        """Move a queued job to its priority's place; False if it is not in this queue (any more).

        Stock RQ code (``FailedJobRegistry.requeue``, rq's scheduler, rq-dashboard) appends at the
        tail; this puts such a job back in order.

        ``priority`` saves loading the job for it.

        Usage: ``queue.reposition(job.id)``
        """
        priority = self.job_priority(job_id) if priority is None else priority
        return self._insert(self.connection, [(job_id, priority, at_front, True)]) == 1

    def requeue_failed(self, job_or_id: Job | str, at_front: bool = False) -> Job:
        """Requeue a failed job of this queue at its own priority (stock requeue appends at the tail,
        and leaves the job hash to expire with its failure TTL: here it lives until it has run).

        Raises ``rq.exceptions.InvalidJobOperation`` if the job is not in the failed registry, and
        ``rq.exceptions.NoSuchJobError`` if it does not exist.

        Usage: ``queue.requeue_failed(job_id)``
        """
        job = self.failed_job_registry.requeue(job_or_id, at_front=at_front)
        if job.ttl is None:  # RQ leaves the failure TTL on the job: it would expire while queued
            self.connection.persist(job.key)
        self.reposition(job.id, at_front=at_front, priority=priority_of(job))
        return job

    def requeue_failed_many(self, job_ids: Sequence[str], at_front: bool = False) -> int:
        """Requeue failed jobs of this queue, each at its own priority; returns how many were requeued.
        Ids no longer in the failed registry, or whose job is gone, are skipped. One script per
        ``REQUEUE_BATCH`` jobs does RQ's requeue writes and the ordered inserts; the jobs are read
        with this queue's serializer.

        Usage: ``queue.requeue_failed_many(queue.failed_job_registry.get_job_ids(0, 999))``
        """
        requeued = 0
        for start in range(0, len(job_ids), REQUEUE_BATCH):
            batch = []
            for job in self.job_class.fetch_many(list(job_ids[start:start + REQUEUE_BATCH]),
                                                 connection=self.connection, serializer=self.serializer):
                if job is None:
                    continue
                if rate_limited(job):  # RQ's requeue takes it through the limit's admission
                    requeued += self._requeue_one(job.id, at_front)
                    continue
                job.started_at = job.ended_at = None  # as RQ's requeue
                job._exc_info = ""
                self._prepare_for_queue(job)
                writes = self._recorded_writes(job)
                if job.ttl is None:  # see requeue_failed
                    writes += [2, "PERSIST", job.key]
                batch.append((job.key, job.id, priority_of(job), at_front, writes))
            requeued += requeue_failed(self.connection, self._order_keys, self.failed_job_registry.key,
                                       self.job_class.redis_job_namespace_prefix, DEFAULT_PRIORITY, batch)
        return requeued

    def _requeue_one(self, job_id: str, at_front: bool) -> int:
        try:
            self.requeue_failed(job_id, at_front=at_front)
        except (InvalidJobOperation, NoSuchJobError):
            return 0
        return 1

    # RQ change: with several queues RQ pops with BLPOP, and a worker killed between the pop and
    # its bookkeeping loses the job. Here the head of the first non-empty queue moves atomically
    # into that queue's intermediate list (as RQ's single-queue BLMOVE does), and the queue's list
    # is refilled from its backlog in the same script; when all are empty
    # the worker blocks on the queues' wake-up lists, which every rqplus push rings. Jobs pushed
    # by stock RQ code ring nothing and are seen at the next sweep, at most `timeout` later.
    @classmethod
    def lpop(cls, queue_keys: Sequence[str], timeout: int | None, connection: Redis | None = None):
        assert connection is not None
        if timeout == 0:  # as RQ: BLPOP's 0 would block forever
            raise ValueError("RQ does not support indefinite timeouts. Please pick a timeout value > 0")
        prefix = cls.redis_queue_namespace_prefix
        names = [key[len(prefix):] for key in queue_keys]
        queues = [fetch_keys(name, key, IntermediateQueue.get_intermediate_queue_key(key))
                  for key, name in zip(queue_keys, names)]
        deadline = time.monotonic() + (timeout or 0)
        while True:
            result = reliable_fetch(connection, queues, cls.job_class.redis_job_namespace_prefix)
            if result is not None or timeout is None:
                return result
            remaining = math.ceil(deadline - time.monotonic())  # a stale wake-up must not extend the wait
            if remaining <= 0 or connection.blpop([wake_key(name) for name in names], remaining) is None:
                raise DequeueTimeout(timeout, queue_keys)

    # RQ change: RQ's single-queue dequeue BLMOVEs from the list; here the list is first refilled from
    # the backlog (and the moved job's priority entry dropped) by the same script as lpop's; only an
    # empty queue waits in RQ's BLMOVE, which any push wakes (the backlog is empty then).
    @classmethod
    def lmove(cls, connection: Redis, queue_key: str, timeout: int | None):
        if timeout == 0:
            raise ValueError("RQ does not support indefinite timeouts. Please pick a timeout value > 0")
        result = cls.lpop([queue_key], None, connection=connection)
        if result is not None or timeout is None:
            return result
        result = super().lmove(connection, queue_key, timeout)
        name = queue_key[len(cls.redis_queue_namespace_prefix):]
        refill(connection, queue_keys(name, queue_key), cls.job_class.redis_job_namespace_prefix, result[1])
        return result

    # RQ change: a job that cannot be loaded (a forged or corrupted field, a job key that is no
    # hash) makes RQ's dequeue raise and the worker quit, exit code 0; here that id is moved from
    # the intermediate list to the failed registry with the reason, and the worker goes on with the
    # next job. Redis faults still propagate (the worker waits them out).
    @classmethod
    def dequeue_any(cls, queues: Iterable[RQQueue], timeout: int | None, connection: Redis,
                    job_class: type[Job] | None = None, serializer: Any = None,
                    death_penalty_class: type[BaseDeathPenalty] | None = None) -> tuple[Job, RQQueue] | None:
        while True:
            try:
                return super().dequeue_any(queues, timeout, connection, job_class, serializer, death_penalty_class)
            except (DequeueTimeout, *TRANSIENT):
                raise
            except Exception as error:
                job_id, queue = getattr(error, "job_id", None), getattr(error, "queue", None)
                if job_id is None or queue is None:
                    raise
                queue.quarantine(job_id, queue.unreadable(job_id) or f"{type(error).__name__}: {error}")

    @classmethod
    def dequeue_many(cls, queues: Sequence[Queue], count: int, connection: Redis,
                     timeout: int | None = None) -> list[tuple[Job, Queue]]:
        """Up to ``count`` jobs of ``queues``, most urgent first, from the first queue on. With
        ``timeout``, when none is ready, wait for one as :meth:`dequeue_any` does (blocking, at most
        ``timeout`` seconds: an empty list then).

        Reliable as :meth:`dequeue_any`: each id is in its queue's intermediate list when this
        returns (one round trip for the whole batch). A job whose hash is gone is skipped, an
        unreadable one quarantined, as ``dequeue_any`` does. Each job has its queue's job class
        and serializer.

        Usage: ``for job, queue in Queue.dequeue_many(worker.queues, 8, redis, timeout=5): ...``
        """
        keys = [fetch_keys(q.name, q.key, q.intermediate_queue_key) for q in queues]
        prefix = cls.job_class.redis_job_namespace_prefix
        found = fetch_many(connection, keys, prefix, count)
        if not found and timeout is not None:
            moved = cls._wait_for_job([q.key for q in queues], timeout, connection)
            if moved is not None:
                found = fetch_many(connection, keys, prefix, count, first=moved)
        jobs = []
        for index, job_id, fields in found:
            queue = queues[index]
            if not fields:  # deleted since it was queued: RQ's dequeue skips it too
                connection.lrem(queue.intermediate_queue_key, 1, job_id)
                continue
            job = queue.job_class(job_id, connection=connection, serializer=queue.serializer)
            try:
                if b"rqplus:not-a-hash" in fields:
                    raise TypeError("the job key holds no hash")
                job.restore(fields)
            except Exception as error:
                queue.quarantine(job_id, queue.unreadable(job_id) or f"{type(error).__name__}: {error}")
                continue
            jobs.append((job, queue))
        return jobs

    @classmethod
    def _wait_for_job(cls, queue_keys: list[str], timeout: int, connection: Redis) -> tuple[int, str] | None:
        """Block until a job arrives (``timeout`` s at most) and move it into its queue's intermediate
        list: (queue index, job id), or None. One queue: RQ's BLMOVE; several: :meth:`lpop`."""
        try:
            if len(queue_keys) == 1:
                job_id = connection.blmove(queue_keys[0], IntermediateQueue.get_intermediate_queue_key(queue_keys[0]),
                                           timeout, "LEFT", "RIGHT")
                return None if job_id is None else (0, as_text(job_id))
            queue_key, job_id = cls.lpop(queue_keys, timeout, connection=connection)
        except DequeueTimeout:
            return None
        return queue_keys.index(as_text(queue_key)), as_text(job_id)

    def unreadable(self, job_id: str) -> str | None:
        """Why the job ``job_id`` cannot be loaded, naming the key or field at fault; None if it can.

        Usage: ``queue.unreadable(job_id)  # -> "job hash field 'data' is missing ..."``
        """
        key = self.job_class.key_for(job_id)
        kind = as_text(self.connection.type(key))
        if kind != "hash":
            return None if kind == "none" else f"job key {key} holds a {kind}, not a job hash"
        fields = {as_text(name): value for name, value in self.connection.hgetall(key).items()}
        if not fields.get("data"):
            return f"job hash field 'data' (the function and its arguments) is missing or empty in {key}"
        for name, parse in JOB_FIELDS.items():
            if fields.get(name):
                try:
                    parse(as_text(fields[name]))
                except Exception as error:
                    return f"job hash field {name!r} is unreadable ({as_text(fields[name])!r}): {error}"
        return None

    def quarantine(self, job_id: str, reason: str) -> None:
        """Move an unreadable job from the intermediate list to the failed registry, saying why
        (in the job hash's ``exc_info``). A job key that is no hash is first renamed aside
        (``rqplus:corrupt:<id>``).

        Usage: ``queue.quarantine(job_id, "job hash field 'timeout' is unreadable ...")``
        """
        keys = (self.intermediate_queue_key, self.failed_job_registry.key, self.job_class.key_for(job_id))
        quarantine(self.connection, keys, job_id, current_timestamp() + DEFAULT_FAILURE_TTL, reason, self.name)
        self.log.error("Job %s of queue %s cannot be read (%s): moved to the failed registry", job_id, self.name,
                       reason)


def reposition_admitted(connection: Redis, job: Job, since: str) -> int:
    """Move the jobs that rq 3.0's ``RateLimit`` of ``job`` admitted at or after ``since`` (an
    ``enqueued_at`` stamp) from the tail, where RQ's admission script pushed them, to their
    priority's place; returns how many moved. Bounded by the limit's concurrency.

    Usage: ``reposition_admitted(redis, finished_job, since)``
    """
    if not rate_limited(job):
        return 0
    moved = 0
    for job_id in RateLimitRegistry.from_job(job).get_allowed_job_ids():
        origin, status, enqueued_at, at_front = connection.hmget(Job.key_for(job_id), "origin", "status",
                                                                 "enqueued_at", "enqueue_at_front")
        if origin and status == JobStatus.QUEUED.value.encode() and enqueued_at and as_text(enqueued_at) >= since:
            moved += Queue(as_text(origin), connection=connection).reposition(job_id, at_front=at_front == b"1")
    return moved
