"""``rqplus.Queue``: an RQ queue whose jobs run most-urgent first.

The queue stays RQ's LIST at ``rq:queue:<name>``, kept in run order at insert time by the Lua
script in :mod:`rqplus.scripts`. So RQ's reliable single-queue BLMOVE dequeue, ``rq info``,
rq-dashboard and even a stock ``rq worker`` see one ordinary queue, already sorted.

Usage::

    from rqplus import Queue
    q = Queue("emails", connection=redis)
    q.enqueue(send_email, "a@example.com", "Hi", "...", priority=0)   # runs before priority 5
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue as RQQueue
from rq.defaults import DEFAULT_FAILURE_TTL
from rq.exceptions import DequeueTimeout
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import EnqueueData
from rq.utils import current_timestamp

from rqplus.defaults import DEFAULT_PRIORITY, MAX_PAYLOAD_BYTES
from rqplus.durability import require_durable
from rqplus.priority import PRIORITY_KEY, priority_of, with_priority
from rqplus.scripts import priority_insert, reliable_fetch, wake_key


class Queue(RQQueue):
    """An RQ ``Queue`` with per-job priority: 0 (most urgent) to 9 (least urgent), default 5.

    Every way in takes ``priority=``: ``enqueue``, ``enqueue_call``, ``enqueue_at``,
    ``enqueue_in`` and ``prepare_data`` (for ``enqueue_many``). ``meta={"priority": N}`` works too.
    Jobs of equal priority run first-in first-out; ``at_front=True`` puts a job ahead of the others
    of its own priority, never ahead of a more urgent one.

    ``durable=True`` refuses to create jobs while Redis is not durable (see
    :mod:`rqplus.durability`): enqueue raises ``rqplus.DurabilityError`` and writes nothing.
    """

    def __init__(self, name: str = "default", *args: Any, durable: bool = False, **kwargs: Any):
        super().__init__(name, *args, **kwargs)
        self.durable = durable

    @property
    def wake_key(self) -> str:
        """The list that wakes multi-queue workers when a job is pushed here."""
        return wake_key(self.name)

    def enqueue(self, f: Any, *args: Any, priority: int | None = None, **kwargs: Any) -> Job:
        """Enqueue ``f(*args, **kwargs)`` at ``priority``; other options as in ``rq.Queue.enqueue``.

        ``priority`` is taken by rqplus: a job function with a ``priority`` parameter gets it
        through ``kwargs={"priority": ...}``, as RQ does for ``job_timeout``.

        Usage: ``queue.enqueue(send_email, "a@example.com", "Hi", "Hello", priority=0)``
        """
        kwargs["meta"] = with_priority(kwargs.get("meta"), priority)
        return super().enqueue(f, *args, **kwargs)

    def enqueue_call(self, *args: Any, priority: int | None = None, **kwargs: Any) -> Job:
        """``rq.Queue.enqueue_call`` with a ``priority`` keyword.

        Usage: ``queue.enqueue_call(func=report, args=(7,), priority=1)``
        """
        kwargs["meta"] = with_priority(kwargs.get("meta"), priority)
        return super().enqueue_call(*args, **kwargs)

    def enqueue_at(self, datetime: datetime, f: Any, *args: Any, priority: int | None = None, **kwargs: Any) -> Job:
        """Schedule a job for ``datetime``; when due it is queued at its priority (``enqueue_in`` too).

        Usage: ``queue.enqueue_at(datetime(2030, 1, 1, tzinfo=UTC), report, priority=2)``
        """
        kwargs["meta"] = with_priority(kwargs.get("meta"), priority)
        return super().enqueue_at(datetime, f, *args, **kwargs)

    @staticmethod
    def prepare_data(*args: Any, priority: int | None = None, **kwargs: Any) -> EnqueueData:
        """``rq.Queue.prepare_data`` with a ``priority`` keyword, for ``enqueue_many``.

        Usage: ``queue.enqueue_many([Queue.prepare_data(report, (1,), priority=0)])``
        """
        kwargs["meta"] = with_priority(kwargs.get("meta"), priority)
        return RQQueue.prepare_data(*args, **kwargs)

    # RQ change: RQ registers the queue (SADD rq:queues) in a round trip of its own before the
    # job's MULTI/EXEC; for a plain enqueue both go in one transaction: a round trip fewer, and a
    # refused enqueue (out of memory, read-only) registers nothing either.
    def enqueue_job(self, job: Job, pipeline: Pipeline | None = None, at_front: bool = False,
                    unique: bool = False) -> Job:
        if pipeline is not None or unique or job._dependency_ids or not self._is_async:
            return super().enqueue_job(job, pipeline=pipeline, at_front=at_front, unique=unique)
        job.origin = self.name
        with self.connection.pipeline() as pipe:
            pipe.sadd(self.redis_queues_keys, self.key)
            self._enqueue_job(job, pipeline=pipe, at_front=at_front)
            pipe.execute()
        return job

    # RQ change: every job is checked before anything is written: a validated priority in its
    # meta (default 5, so paths that bypass the keyword above are checked too), a function a
    # worker can import by name, arguments that serialize within the size limit, and for a
    # durable queue, a durable Redis. (RQ finds bad arguments only while saving, after it has
    # already registered the queue.)
    def create_job(self, *args: Any, **kwargs: Any) -> Job:
        kwargs["meta"] = with_priority(kwargs.get("meta"), None)
        job = super().create_job(*args, **kwargs)
        self._check_payload(job)
        if self.durable:
            require_durable(self.connection)
        return job

    def _check_payload(self, job: Job) -> None:
        if "<lambda>" in job.func_name or "<locals>" in job.func_name:
            raise ValueError(f"{job.func_name} cannot be imported by a worker: enqueue a module-level function")
        try:
            size = len(job.data)  # serializes now; the bytes are reused when the job is saved
        except Exception as error:
            raise TypeError(f"the arguments of {job.func_name} cannot be serialized with "
                            f"{getattr(self.serializer, '__name__', self.serializer)}: {error}") from error
        limit = int(os.environ.get("RQPLUS_MAX_PAYLOAD_BYTES", MAX_PAYLOAD_BYTES))
        if size > limit:
            raise ValueError(f"job {job.func_name} serializes to {size} bytes, over the {limit} byte limit "
                             "(RQPLUS_MAX_PAYLOAD_BYTES): store large inputs elsewhere and pass their key")

    # RQ change: also writes the priority as a plain hash field, readable by the Lua insert.
    def _persist_job(self, job: Job, pipeline: Pipeline, *args: Any, **kwargs: Any) -> None:
        super()._persist_job(job, pipeline, *args, **kwargs)
        pipeline.hset(job.key, PRIORITY_KEY, priority_of(job))

    # RQ change: RPUSH/LPUSH becomes the ordered insert, so the list stays in run order.
    def push_job_id(self, job_id: str, pipeline: Pipeline | None = None, at_front: bool = False) -> None:
        connection = pipeline if pipeline is not None else self.connection
        prefix = self.job_class.redis_job_namespace_prefix
        priority_insert(connection, self.key, self.wake_key, job_id, prefix, DEFAULT_PRIORITY, at_front)
        self.log.debug("Pushed job %s into %s in priority order", job_id, self.name)

    # RQ change: unique=True saves and pushes in RQ's own Lua script (plain RPUSH/LPUSH, no
    # priority field), so the job is moved to its priority's place right after.
    def _enqueue_async_job(
        self, job: Job, pipeline: Pipeline | None = None, at_front: bool = False, unique: bool = False
    ) -> Job:
        job = super()._enqueue_async_job(job, pipeline=pipeline, at_front=at_front, unique=unique)
        if unique:
            self.reposition(job.id, at_front=at_front, priority=priority_of(job))
        return job

    def reposition(self, job_id: str, at_front: bool = False, priority: int | None = None) -> bool:
        """Move a queued job to its priority's place; False if it is not in this queue (any more).

        Stock RQ code (``FailedJobRegistry.requeue``, rq's scheduler, rq-dashboard) appends at the
        tail; this puts such a job back in order.

        ``priority``, when given, is recorded on the job first.

        Usage: ``queue.reposition(job.id)``
        """
        prefix = self.job_class.redis_job_namespace_prefix
        moved = priority_insert(
            self.connection, self.key, self.wake_key, job_id, prefix, DEFAULT_PRIORITY, at_front, True, priority
        )
        return moved >= 0

    def requeue_failed(self, job_or_id: Job | str, at_front: bool = False) -> Job:
        """Requeue a failed job of this queue at its own priority (stock requeue appends at the tail).

        Raises ``rq.exceptions.InvalidJobOperation`` if the job is not in the failed registry, and
        ``rq.exceptions.NoSuchJobError`` if it does not exist.

        Usage: ``queue.requeue_failed(job_id)``
        """
        job = self.failed_job_registry.requeue(job_or_id, at_front=at_front)
        self.reposition(job.id, at_front=at_front)
        return job

    # RQ change: with several queues RQ pops with BLPOP, and a worker killed between the pop and
    # its bookkeeping loses the job. Here the head of the first non-empty queue moves atomically
    # into that queue's intermediate list (as RQ's single-queue BLMOVE does); when all are empty
    # the worker blocks on the queues' wake-up lists, which every rqplus push rings. Jobs pushed
    # by stock RQ code ring nothing and are seen at the next sweep, at most `timeout` later.
    @classmethod
    def lpop(cls, queue_keys: Sequence[str], timeout: int | None, connection: Redis | None = None):
        assert connection is not None
        if timeout == 0:  # as RQ: BLPOP's 0 would block forever
            raise ValueError("RQ does not support indefinite timeouts. Please pick a timeout value > 0")
        prefix = cls.redis_queue_namespace_prefix
        names = [key[len(prefix):] for key in queue_keys]
        intermediate_keys = [IntermediateQueue.get_intermediate_queue_key(key) for key in queue_keys]
        deadline = time.monotonic() + (timeout or 0)
        while True:
            result = reliable_fetch(connection, list(queue_keys), intermediate_keys)
            if result is not None or timeout is None:
                return result
            remaining = math.ceil(deadline - time.monotonic())  # a stale wake-up must not extend the wait
            if remaining <= 0 or connection.blpop([wake_key(name) for name in names], remaining) is None:
                raise DequeueTimeout(timeout, queue_keys)

    # RQ change: a job hash that cannot be loaded (say, a forged or corrupted field) makes RQ's
    # dequeue raise and the worker quit; here that id is moved from the intermediate list to the
    # failed registry with the reason, and the worker goes on with the next job.
    @classmethod
    def dequeue_any(cls, queues: Any, timeout: int | None, connection: Redis, *args: Any, **kwargs: Any):
        while True:
            try:
                return super().dequeue_any(queues, timeout, connection, *args, **kwargs)
            except (DequeueTimeout, RedisError):
                raise
            except Exception as error:
                job_id, queue = getattr(error, "job_id", None), getattr(error, "queue", None)
                if job_id is None or queue is None:
                    raise
                queue.quarantine(job_id, f"{type(error).__name__}: {error}")

    def quarantine(self, job_id: str, reason: str) -> None:
        """Move an unreadable job from the intermediate list to the failed registry, saying why.

        Usage: ``queue.quarantine(job_id, "ValueError: bad created_at")``
        """
        with self.connection.pipeline() as pipeline:
            pipeline.lrem(self.intermediate_queue_key, 1, job_id)
            pipeline.zadd(self.failed_job_registry.key, {job_id: current_timestamp() + DEFAULT_FAILURE_TTL})
            pipeline.hset(self.job_class.key_for(job_id), mapping={"status": "failed", "exc_info": reason})
            pipeline.execute()
        self.log.error("Job %s of queue %s cannot be read (%s): moved to the failed registry", job_id, self.name,
                       reason)
