"""``rqplus.job.Job``: RQ's ``Job`` whose function and callbacks resolve through the allow-list.

RQ turns a job's function name (and its callbacks' names) into a callable with
``import_attribute``, which imports any module and walks through any module global. Here the same
properties resolve through :mod:`rqplus.allowlist`: what an rqplus worker calls is the object it
judged, so no check on a string can be walked around. rqplus workers use this class (or mix it
into the job class given with ``-j``) on their own; producers need nothing.

Usage::

    job = rqplus.job.Job.fetch(job_id, connection=redis)
    job.func          # the function, or ForbiddenJobError if it is not defined in an allowed module
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from rq.job import Job as RQJob

from rqplus.allowlist import resolve, resolve_job_function
from rqplus.compat import JobCompat


class Job(JobCompat, RQJob):
    """An RQ job whose callables are resolved and judged by :mod:`rqplus.allowlist` when asked for."""

    # RQ change: the function is resolved by the allow-list (RQ: import_attribute of any name).
    @property
    def func(self) -> Callable[..., Any] | None:
        func_name = self.func_name
        return None if func_name is None else resolve_job_function(func_name, self.instance)

    # RQ change: equal to a job of the class this one was judged from (RQ: of its own class only),
    # so a worker's jobs compare equal to the caller's (judged_job_class mixes this class in).
    def __eq__(self, other: object) -> bool:
        return isinstance(other, RQJob) and isinstance(self, type(other)) and self.id == other.id

    __hash__ = RQJob.__hash__

    # RQ change: callbacks too, by name at every call (RQ caches whatever import_attribute found).
    @property
    def success_callback(self) -> Callable[..., Any] | None:
        return _callback(self._success_callback_name)

    @property
    def failure_callback(self) -> Callable[..., Any] | None:
        return _callback(self._failure_callback_name)

    @property
    def stopped_callback(self) -> Callable[..., Any] | None:
        return _callback(self._stopped_callback_name)


def _callback(name: str | None) -> Callable[..., Any] | None:
    return resolve(name) if name else None


@functools.lru_cache(maxsize=None)
def judged_job_class(job_class: type[RQJob]) -> type[Job]:
    """``job_class`` with :class:`Job`'s resolution mixed in (itself when it already has it).

    Usage: ``worker.job_class = judged_job_class(MyJob)``
    """
    if issubclass(job_class, Job):
        return job_class
    return type(f"Judged{job_class.__name__}", (Job, job_class), {"__module__": job_class.__module__})
