"""Every difference between rq 2.12 and rq 3.x that rqplus meets, in one place.

The rest of rqplus reads as if there were one RQ; dropping 2.12 later is deleting the 2.12 branches
here. Worker hooks whose signature gained an ``execution`` in rq 3.0 take it as ``*execution``
(empty on 2.12, which keeps it in ``worker.execution``) and pass it on unchanged.

Usage::

    from rqplus.compat import RQ3, execution_option
    worker.handle_job_failure(job, queue, exc_string=reason, **execution_option(execution))
"""

from __future__ import annotations

import logging
from typing import Any

import rq
from redis.exceptions import ResponseError

from rqplus.faults import TRANSIENT, wait_out

#: The installed rq's (major, minor).
RQ_VERSION: tuple[int, int] = tuple(int(part) for part in rq.__version__.split(".")[:2])  # type: ignore[assignment]
#: True on rq 3.x: executions passed explicitly, rate limits, ready-to-enqueue dependents.
RQ3 = RQ_VERSION >= (3, 0)


def execution_option(*execution: Any) -> dict[str, Any]:
    """``{"execution": e}`` for rq 3.0's hooks that take the running execution; ``{}`` on rq 2.12.

    Usage: ``worker.handle_job_failure(job, queue, exc_string=reason, **execution_option(*execution))``
    """
    return {"execution": execution[0]} if RQ3 and execution else {}

try:  # rq 3.0: concurrency limits per key; jobs wait as rate_limited, admitted by RQ's own Lua
    from rq.rate_limit import RateLimitRegistry
except ImportError:  # rq 2.12 has none
    RateLimitRegistry = None  # type: ignore[assignment,misc]


def rate_limited(job: Any) -> bool:
    """True for a job enqueued with rq 3.0's ``rate_limit=RateLimit(...)`` (never on rq 2.12).

    Usage: ``if rate_limited(job): ...``
    """
    return bool(getattr(job, "has_rate_limit", False))


if RQ3:
    class WorkerCompat:
        """Nothing of rq 3.x's worker needs adapting."""
else:
    class WorkerCompat:  # type: ignore[no-redef]
        """rq 2.12's worker brought to what rq 3.0 does, for ``rqplus.Worker`` to inherit first."""

        # RQ change (rq 2.12): the worker reads its own address with CLIENT INFO, as rq 3.0 does,
        # not CLIENT LIST, an admin command listing every client (the ACL worker user lacks it).
        def _set_ip_address(self, connection: Any) -> None:
            try:
                connection.client_setname(self.name)
                self.ip_address = str(connection.client_info()["addr"])
            except ResponseError:  # Redis < 6.2, or CLIENT refused: RQ 2.12's own lookup and warnings
                super()._set_ip_address(connection)  # type: ignore[misc]

        # RQ change (rq 2.12): RQ forgets worker.execution as it queues a job's end, before the
        # transaction runs; a re-run after a lost EXEC (RQ's WatchError loop, rqplus' wait) then
        # recorded the end but left the started-registry entry. Kept, as rq 3.0 passes it each time.
        def cleanup_execution(self, job: Any, pipeline: Any) -> None:
            execution = self.execution  # type: ignore[attr-defined]
            super().cleanup_execution(job, pipeline)  # type: ignore[misc]
            self.execution = execution

        # RQ change (rq 2.12, gone in 3.0): the working-time note (shown by `rq info`), written every
        # beat while a job runs, is skipped while Redis is unavailable (RQ's worker would quit on it).
        def set_current_job_working_time(self, working_time: float, pipeline: Any = None) -> None:
            try:
                super().set_current_job_working_time(working_time, pipeline)  # type: ignore[misc]
            except TRANSIENT as error:
                self.log.warning("Worker %s: could not record the job's working time, Redis unavailable (%s)",
                                 self.name, error)  # type: ignore[attr-defined]


if RQ3:
    class JobCompat:
        """Nothing of rq 3.x's Job needs adapting."""
else:
    from rq.job import _job_stack

    class JobCompat:  # type: ignore[no-redef]
        """rq 2.12's Job brought to what rq 3.0 does, for ``rqplus.job.Job`` to inherit first."""

        # RQ change (rq 2.12; 3.0 writes nothing here): perform() starts with a PERSIST on the job
        # key, which no worker hook covers: a Redis fault there failed a job that never ran. The
        # PERSIST waits the fault out; the rest is RQ 2.12's perform() as is (one round trip, as RQ).
        def perform(self) -> Any:
            wait_out(lambda: self.connection.persist(self.key), logging.getLogger("rq.job"), f"Job {self.id}")  # type: ignore[attr-defined]
            _job_stack.push(self)
            try:
                self._result = self._execute()  # type: ignore[attr-defined]
            finally:
                assert self is _job_stack.pop()
            return self._result
