"""Which job functions a worker may run: only those in allowed modules.

Anyone who can write to Redis can forge a job hash naming any function (``os.system``), with
pickle or JSON alike. An rqplus worker checks the job's function against ``RQPLUS_JOB_MODULES``
(comma-separated module prefixes, default ``tasks``) before anything is imported or called.

Usage::

    RQPLUS_JOB_MODULES=tasks,myapp.jobs rq worker -w rqplus.Worker --queue-class rqplus.Queue emails
"""

from __future__ import annotations

import os

from rq.exceptions import DeserializationError
from rq.job import Job

#: Environment variable listing the module prefixes whose functions workers may run.
JOB_MODULES_ENV = "RQPLUS_JOB_MODULES"
DEFAULT_JOB_MODULES = ("tasks",)


def allowed_modules() -> tuple[str, ...]:
    """The module prefixes from ``$RQPLUS_JOB_MODULES`` (default: ``tasks``)."""
    raw = os.environ.get(JOB_MODULES_ENV)
    if raw is None:
        return DEFAULT_JOB_MODULES
    return tuple(prefix.strip() for prefix in raw.split(",") if prefix.strip())


def is_allowed(dotted: str, modules: tuple[str, ...]) -> bool:
    """True when ``dotted`` (``pkg.mod.func``) lies in one of ``modules`` (``pkg`` or ``pkg.mod``)."""
    return any(dotted == prefix or dotted.startswith(prefix + ".") for prefix in modules) and "." in dotted


def refusal(job: Job, modules: tuple[str, ...] | None = None) -> str | None:
    """Why ``job`` must not run (the failure text, starting with the error's name), or None if its
    function is allowed. Imports nothing.

    Usage: ``refusal(job)  # -> "ForbiddenJobError: function os.system is not in an allowed module ..."``
    """
    modules = allowed_modules() if modules is None else modules
    try:
        func_name, instance = job.func_name, job.instance
    except DeserializationError as error:
        return f"DeserializationError: the job's data cannot be read with {job.serializer!r}: {error.__cause__ or error}"
    # a bound method is named by its instance's class, not by the method name alone
    dotted = f"{type(instance).__module__}.{type(instance).__qualname__}.{func_name}" if instance is not None \
        else str(func_name)
    if is_allowed(dotted, modules):
        return None
    return (f"ForbiddenJobError: function {dotted} is not in an allowed module ({', '.join(modules) or 'none'}); "
            f"not imported, not run. Allow it with {JOB_MODULES_ENV}")
