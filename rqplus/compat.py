"""Every difference between rq 2.12 and rq 3.x that rqplus meets, in one place.

The rest of rqplus reads as if there were one RQ; dropping 2.12 later is deleting the 2.12 branches
here. Overrides whose RQ method differs between releases (rq 3.0's ``rate_limit=``, the worker
hooks' ``execution``) take the installed rq's signature with :func:`rq_signature`.

Usage::

    from rqplus.compat import RQ3, rq_signature

    @rq_signature(rq.Worker.perform_job)
    def perform_job(self, job, queue, **execution): ...   # execution: {} on 2.12, {"execution": e} on 3.0
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import rq
from redis import Redis
from redis.exceptions import ResponseError
from rq.registry import StartedJobRegistry

from rqplus.faults import TRANSIENT, wait_out

#: The installed rq's (major, minor).
RQ_VERSION: tuple[int, int] = tuple(int(part) for part in rq.__version__.split(".")[:2])  # type: ignore[assignment]
#: True on rq 3.x: executions passed explicitly, rate limits, ready-to-enqueue dependents.
RQ3 = RQ_VERSION >= (3, 0)

F = TypeVar("F", bound=Callable[..., Any])


def rq_signature(rq_method: Callable[..., Any]) -> Callable[[F], F]:
    """Decorator: the override accepts exactly ``rq_method``'s parameters, positional or keyword, as
    the installed rq defines them, plus the keyword-only parameters it declares itself (``priority``).

    A call is bound to that signature (a call RQ would refuse raises the same ``TypeError``), and
    the override receives every argument the caller gave *by name*, so it can read or replace one
    (``meta``) wherever the caller put it and pass them all on: ``super().method(**arguments)``.
    ``inspect.signature`` shows RQ's parameters and the extras.

    Usage::

        @rq_signature(rq.Queue.enqueue_call)
        def enqueue_call(self, *, priority: int | None = None, **arguments: Any) -> Job: ...
    """
    rq_parameters = list(inspect.signature(rq_method).parameters.values())
    if any(p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL) for p in rq_parameters):
        raise TypeError(f"{rq_method.__qualname__} takes arguments that cannot be passed by name")
    var_keyword = [p for p in rq_parameters if p.kind is p.VAR_KEYWORD]
    rq_names = {p.name for p in rq_parameters}

    def decorate(function: F) -> F:
        extras = [p for p in inspect.signature(function).parameters.values()
                  if p.kind is p.KEYWORD_ONLY and p.name not in rq_names]
        signature = inspect.Signature([*(p for p in rq_parameters if p.kind is not p.VAR_KEYWORD), *extras,
                                       *var_keyword])

        positional = [p.name for p in rq_parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        named = {p.name for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD}

        # enqueue and every job's bookkeeping pass here: names are matched by hand (about 1 µs);
        # only a call that RQ's method would refuse goes through Signature.bind, for its TypeError
        @functools.wraps(function)
        def override(*args: Any, **kwargs: Any) -> Any:
            arguments = dict(zip(positional, args))
            if (len(args) > len(positional) or not arguments.keys().isdisjoint(kwargs)
                    or not (var_keyword or kwargs.keys() <= named)):
                signature.bind(*args, **kwargs)
            arguments.update(kwargs)
            return function(**arguments)

        override.__signature__ = signature  # type: ignore[attr-defined]
        return override  # type: ignore[return-value]

    return decorate

try:  # rq 3.0: concurrency limits per key; jobs wait as rate_limited, admitted by RQ's own Lua
    from rq.rate_limit import RateLimitRegistry
except ImportError:  # rq 2.12 has none
    RateLimitRegistry = None  # type: ignore[assignment,misc]


#: The modules of the installed rq whose ``*_SCRIPT`` strings RQ runs through ``register_script``
#: (rqplus's function library holds them: rqplus.functions.rq_scripts); rate limits are rq 3.x's.
RQ_SCRIPT_MODULES = ("rq.scripts", "rq.scheduler", *(("rq.rate_limit",) if RQ3 else ()))

def rate_limited(job: Any) -> bool:
    """True for a job enqueued with rq 3.0's ``rate_limit=RateLimit(...)`` (never on rq 2.12).

    Usage: ``if rate_limited(job): ...``
    """
    return bool(getattr(job, "has_rate_limit", False))


if RQ3:
    from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE


def execution_candidates(connection: Redis, workers: Mapping[str, Sequence[str]]) -> list[str]:
    """``job_id:execution_id`` keys of the RQ executions ``workers`` (worker name -> its queue
    names) may be running, in one pipelined round trip however many workers and executions.

    An execution runs while its hash ``rq:execution:<key>`` exists; the hash's ``worker_name``
    says whose it is. The caller reads both (rq 2.12 finds other workers' executions too).

    Usage: ``execution_candidates(redis, {"w1": ["emails"]})  # ["<job id>:<execution id>", ...]``
    """
    with connection.pipeline(transaction=False) as pipe:
        if RQ3:  # an index set per worker, rq:worker:<name>:executions
            for name in workers:
                pipe.smembers(WORKER_EXECUTIONS_KEY_TEMPLATE.format(name))
        else:  # rq 2.12 has no index (its worker hash names one current_job): the started registries
            for queue in sorted({queue for names in workers.values() for queue in names}):
                pipe.zrange(StartedJobRegistry(queue, connection=connection).key, 0, -1)
        found = pipe.execute()
    # job ids hold no ":" (RQ validates them); any other entry is forged, and left out
    return sorted({key for keys in found for key in map(_text, keys) if key.count(":") == 1})


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


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
        def set_current_job_working_time(self, current_job_working_time: float, pipeline: Any = None) -> None:
            try:
                super().set_current_job_working_time(current_job_working_time, pipeline)  # type: ignore[misc]
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


@functools.cache
def execution_key_prefixes() -> tuple[str, str]:
    """The prefixes of RQ's execution hashes (``<prefix><job id>:<execution id>``) and of its
    per-job execution registries (``<prefix><job id>``), as the installed rq names them.

    Usage: ``hash_prefix, registry_prefix = execution_key_prefixes()``
    """
    from rq.executions import Execution, ExecutionRegistry
    return Execution("e", "j", None).key.removesuffix("j:e"), ExecutionRegistry.key_template.format("")  # type: ignore[arg-type]


#: Whether RQ's execution hash holds its job's id (rq 3.x; 2.12 reads it from the key).
EXECUTION_HOLDS_JOB_ID = RQ3


if RQ3:
    from rq.job import _current_job

    @contextlib.contextmanager
    def current_job(job: Any) -> Iterator[None]:
        """``rq.get_current_job()`` is ``job`` inside (rq 3.0 keeps it in a context variable, so each
        asyncio task of an AsyncWorker sees its own job)."""
        token = _current_job.set(job)
        try:
            yield
        finally:
            _current_job.reset(token)
else:
    @contextlib.contextmanager
    def current_job(job: Any) -> Iterator[None]:  # rq 2.12 keeps it per thread: nothing to do in a task
        """rq 2.12: ``rq.get_current_job()`` returns None inside an AsyncWorker's coroutine jobs."""
        yield


if RQ3:
    class ConcurrentCompat:
        """rq 3.x keeps one execution per running job and passes it to every hook: used as is."""

        def bind(self, run: Any) -> None:
            """Make ``run`` the current thread's execution (rq 2.12 keeps one on the worker)."""

        @staticmethod
        def execution_argument(execution: Any) -> dict[str, Any]:
            """The ``execution`` keyword RQ's worker hooks take (rq 2.12: none, see :meth:`bind`)."""
            return {"execution": execution}

        def finalize_success(self, job: Any, queue: Any, execution: Any, return_value: Any) -> None:
            """RQ's end of a job that returned: result, ``Retry``, success callback, dependents."""
            self._finalize_success(job, queue, execution, return_value)  # type: ignore[attr-defined]

        def finalize_failure(self, job: Any, queue: Any, execution: Any, exc_info: Any) -> None:
            """RQ's end of a job that raised: failure callback, exception handlers, retry or failed."""
            self._finalize_failure(job, queue, execution, exc_info)  # type: ignore[attr-defined]
else:
    import sys
    import threading
    import traceback

    from rq.job import JobStatus, Retry

    class ConcurrentCompat:  # type: ignore[no-redef]
        """rq 2.12's worker keeps ONE execution (``worker.execution``) and its hooks read it there:
        for several jobs at once it is kept per thread, and the end of a job is rq 2.12's
        ``perform_job`` after the call (rq 3.0 has it as ``_finalize_success``/``_failure``)."""

        _local = threading.local()

        @property
        def execution(self) -> Any:
            return getattr(self._local, "execution", None)

        @execution.setter
        def execution(self, execution: Any) -> None:
            self._local.execution = execution

        def bind(self, run: Any) -> None:
            """Make ``run``'s execution the current thread's ``worker.execution``."""
            self.execution = run.execution

        @staticmethod
        def execution_argument(execution: Any) -> dict[str, Any]:
            return {}

        # rq 2.12's perform_job from the end of the call on
        def finalize_success(self, job: Any, queue: Any, execution: Any, return_value: Any) -> None:
            self.handle_execution_ended(job, queue, job.success_callback_timeout)  # type: ignore[attr-defined]
            job._result = return_value
            if isinstance(return_value, Retry):
                self.handle_job_retry(job=job, queue=queue, retry=return_value,  # type: ignore[attr-defined]
                                      started_job_registry=queue.started_job_registry, execution=execution)
                return
            job._status = JobStatus.FINISHED
            job.execute_success_callback(self.death_penalty_class, return_value)  # type: ignore[attr-defined]
            self.handle_job_success(job=job, queue=queue,  # type: ignore[attr-defined]
                                    started_job_registry=queue.started_job_registry)
            job.send_webhooks(JobStatus.FINISHED)

        def finalize_failure(self, job: Any, queue: Any, execution: Any, exc_info: Any) -> None:
            job._status = JobStatus.FAILED
            self.handle_execution_ended(job, queue, job.failure_callback_timeout)  # type: ignore[attr-defined]
            try:
                job.execute_failure_callback(self.death_penalty_class, *exc_info)  # type: ignore[attr-defined]
            except Exception:
                exc_info = sys.exc_info()
            self.handle_exception(job, *exc_info)  # type: ignore[attr-defined]
            self.handle_job_failure(job=job, exc_string="".join(traceback.format_exception(*exc_info)),  # type: ignore[attr-defined]
                                    queue=queue, started_job_registry=queue.started_job_registry)
