"""Task defaults: a job function declares once how its jobs run (queue, priority, retry, timeouts).

With plain RQ a job's retry policy and priority exist only if every producer remembers them.
``@task(...)`` stores them on the function as a frozen :class:`TaskDefaults`
(``func.__rqplus_task__``) and returns the same plain function: callable directly, importable by
its dotted path, pickled by reference. Every job ``rqplus.Queue`` creates for it takes each option
the caller left unset (``None``) from there; what the caller gives wins. That holds for
``enqueue``, ``enqueue_call``, ``enqueue_at``/``enqueue_in``, ``prepare_data`` + ``enqueue_many``,
a dotted name (looked up through :mod:`rqplus.allowlist`: only allowed modules are imported; any
other name gets no defaults), ``rq enqueue --queue-class rqplus.Queue``, rq-scheduler's jobs (when
they fall due) and ``func.delay(...)``. The declared queue is the one ``func.delay`` uses;
``Queue("other").enqueue(func)`` stays on ``other``.

Usage::

    from rq import Retry
    from rqplus import task

    @task(queue="emails", priority=3, retry=Retry(max=3, interval=[10, 60, 300]), job_timeout=30)
    def send_welcome(address: str) -> None: ...

    send_welcome.delay("ada@example.com")                     # queue "emails", priority 3, 3 retries
    Queue("emails", connection=redis).enqueue(send_welcome, "ada@example.com")   # the same defaults
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rq import Retry, get_current_job
from rq.job import Job

from rqplus.allowlist import allowed_modules, resolve
from rqplus.connections import shared
from rqplus.exceptions import ForbiddenJobError
from rqplus.limits import DURATIONS, check_queue_name
from rqplus.priority import PRIORITY_KEY, validate_priority, with_priority

#: The attribute of a job function holding its :class:`TaskDefaults`.
TASK_ATTRIBUTE = "__rqplus_task__"

F = TypeVar("F", bound=Callable[..., Any])
RetryPolicy = Retry | Callable[[], Retry | None]


@dataclass(frozen=True)
class TaskDefaults:
    """What a job function declared with :func:`task`; ``None`` leaves an option to RQ (or rqplus).

    ``retry`` is a ``Retry`` or a zero-argument callable building one (or None) per job, so a
    policy can be jittered or read from the environment at enqueue time.

    Usage: ``send_email.__rqplus_task__.priority  # -> 3``
    """

    queue: str | None = None
    priority: int | None = None
    retry: RetryPolicy | None = None
    job_timeout: int | None = None
    result_ttl: int | None = None
    failure_ttl: int | None = None
    ttl: int | None = None
    durable: bool = False

    def build_retry(self) -> Retry | None:
        """The ``Retry`` for one new job: the declared one, or what the declared callable builds now.

        Raises ``TypeError`` when the callable returns something else than a ``Retry`` or None.

        Usage: ``send_email.__rqplus_task__.build_retry()  # -> Retry(max=5, interval=[9, 22, ...])``
        """
        if not callable(self.retry):
            return self.retry
        built = self.retry()
        if built is not None and not isinstance(built, Retry):
            raise TypeError(f"the task's retry callable {self.retry!r} returned {built!r}: expected an rq.Retry or None")
        return built

    def fill(self, arguments: dict[str, Any]) -> None:
        """Give ``Queue.create_job``'s ``arguments`` every declared option they leave ``None``.

        Usage: ``defaults.fill(arguments)`` before ``rq.Queue.create_job(**arguments)``
        """
        for duration in DURATIONS:
            value = getattr(self, duration.option)
            if value is not None and arguments.get(duration.field) is None:
                arguments[duration.field] = value
        if self.retry is not None and arguments.get("retry") is None:
            arguments["retry"] = self.build_retry()
        if self.priority is not None:
            arguments["meta"] = with_priority(arguments.get("meta"), None, self.priority)

    def fill_job(self, job: Job) -> None:
        """Give a job created without ``Queue.create_job`` (rq-scheduler's ``Job.create``) every
        declared option it has none of, as ``Job.create`` would have set it.

        Usage: ``defaults.fill_job(job)`` before the job is saved and queued
        """
        for duration in DURATIONS:
            value = getattr(self, duration.option)
            if value is not None and getattr(job, duration.field) is None:
                setattr(job, duration.field, value)
        retry = self.build_retry() if job.retries_left is None else None
        if retry is not None:
            job.retries_left, job.retry_intervals = retry.max, retry.intervals
            job.enqueue_at_front_on_retry = retry.enqueue_at_front
        if self.priority is not None and job.meta.get(PRIORITY_KEY) is None:
            job.meta[PRIORITY_KEY] = self.priority


def task(*, queue: str | None = None, priority: int | None = None, retry: RetryPolicy | None = None,
         job_timeout: int | str | None = None, result_ttl: int | str | None = None,
         failure_ttl: int | str | None = None, ttl: int | str | None = None,
         durable: bool = False) -> Callable[[F], F]:
    """Decorator: declare the defaults of a job function's jobs; returns the same function, with
    ``__rqplus_task__`` (a :class:`TaskDefaults`) and ``delay``/``enqueue`` (see :func:`delay`).

    ``queue``: where ``func.delay`` enqueues (default ``"default"``). ``priority``: 0-9.
    ``retry``: an ``rq.Retry`` or a zero-argument callable returning one (or None) per job.
    ``job_timeout`` (seconds or RQ's ``"10m"``; -1 for none), ``result_ttl`` and ``failure_ttl``
    (-1 keeps forever), ``ttl``: as RQ's enqueue options, within the bounds of
    :data:`rqplus.limits.DURATIONS`. ``durable=True``: enqueue refuses a Redis that could lose the
    job (``rqplus.DurabilityError``), whatever the queue says.

    Every option is checked here: ``TypeError`` for a wrong type, ``ValueError`` for a value out
    of range (a priority of 10, a negative ttl, a queue name rqplus refuses: see :mod:`rqplus.limits`).

    Usage: ``@task(queue="emails", priority=3, retry=Retry(max=3, interval=[10, 60]))``
    """
    if queue is not None:
        check_queue_name(queue)
    if priority is not None:
        validate_priority(priority)
    if not isinstance(durable, bool):
        raise TypeError(f"durable must be True or False, not {durable!r}")
    given = {"job_timeout": job_timeout, "result_ttl": result_ttl, "failure_ttl": failure_ttl, "ttl": ttl}
    defaults = TaskDefaults(queue=queue, priority=priority, retry=_checked_retry(retry), durable=durable,
                            **{duration.option: duration.check(given[duration.option]) for duration in DURATIONS})

    def decorate(func: F) -> F:
        if not inspect.isfunction(func):
            raise TypeError(f"@task declares the defaults of a job function, not of {type(func).__name__} {func!r}")
        setattr(func, TASK_ATTRIBUTE, defaults)
        func.delay = func.enqueue = functools.partial(delay, func)  # type: ignore[attr-defined]
        return func

    return decorate


def delay(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
    """Enqueue ``func(*args, **kwargs)`` on its declared queue (``func.delay`` / ``func.enqueue``).

    Keywords are ``rqplus.Queue.enqueue``'s: RQ's options (``job_timeout``, ``job_id``, ...) and
    ``priority`` win over the declared ones, the rest go to the function. The Redis is the running
    job's inside a worker, else ``rqplus.connections.shared()`` (``REDIS_URL``).

    Usage: ``send_email.delay("a@example.com", "Hi", "Hello", priority=0)``
    """
    from rqplus.queue import Queue  # rqplus.queue imports this module

    declared = task_defaults(func)
    running = get_current_job()
    connection = running.connection if running is not None else shared()
    name = declared.queue if declared is not None and declared.queue is not None else "default"
    return Queue(name, connection=connection).enqueue(func, *args, **kwargs)


def task_defaults(func: object) -> TaskDefaults | None:
    """The defaults ``func`` (a job function or its dotted name) declared with :func:`task`, or None.

    A dotted name is resolved through :mod:`rqplus.allowlist` (``RQPLUS_JOB_MODULES``): a name
    outside the allowed modules, or one that does not resolve, imports nothing and has none.

    Usage: ``task_defaults("tasks.emails.send_email").queue  # -> "emails"``
    """
    if isinstance(func, str):
        return _named_task_defaults(func, allowed_modules())
    return getattr(func, TASK_ATTRIBUTE, None)


@functools.lru_cache(maxsize=1024)
def _named_task_defaults(name: str, modules: tuple[str, ...]) -> TaskDefaults | None:
    try:
        return getattr(resolve(name, modules), TASK_ATTRIBUTE, None)
    except (ForbiddenJobError, ImportError):  # the job fails on the worker, which says why
        return None


def _checked_retry(retry: object) -> RetryPolicy | None:
    if retry is None or isinstance(retry, Retry):
        return retry
    if callable(retry):
        try:
            inspect.signature(retry).bind()
        except TypeError:
            raise TypeError(f"retry={retry!r} must be callable without arguments (it builds each job's Retry)") from None
        except ValueError:  # no signature to read (some builtins): it is called, and checked, per job
            pass
        return retry
    raise TypeError(f"retry must be an rq.Retry or a zero-argument callable returning one, not {retry!r}")
