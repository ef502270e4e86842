"""Job priority: the accepted range, validation, and where a job keeps its priority.

A job's priority is stored twice, on purpose:

* ``job.meta["priority"]`` so Python code, ``rq info`` style tools and the dashboard can see it;
* a plain ``priority`` field in the job hash, so the Lua insert in :mod:`rqplus.scripts` can
  compare jobs without deserialising anything.

Usage::

    from rqplus.priority import validate_priority, priority_of
    validate_priority(0)        # -> 0
    priority_of(job)            # -> 5 for a job enqueued without a priority
"""

from __future__ import annotations

import math
from typing import Any

from rq.job import Job

from rqplus.defaults import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY

#: Key under which the priority is kept in ``job.meta`` and in the job hash.
PRIORITY_KEY = "priority"

_RANGE = f"an int from {MIN_PRIORITY} (most urgent) to {MAX_PRIORITY} (least urgent)"


def validate_priority(priority: Any) -> int:
    """Return ``priority`` as an int, or raise before anything touches Redis.

    ``None`` means the default. Raises ``TypeError`` for str, float (NaN included), bool and other
    non-integers, ``ValueError`` for integers outside the range.

    Usage: ``validate_priority(None) == 5``
    """
    if priority is None:
        return DEFAULT_PRIORITY
    if isinstance(priority, bool) or not hasattr(priority, "__index__"):
        shown = "NaN" if isinstance(priority, float) and math.isnan(priority) else repr(priority)
        raise TypeError(f"priority must be {_RANGE}, got {shown} ({type(priority).__name__})")
    value = priority.__index__()
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise ValueError(f"priority must be {_RANGE}, got {value}")
    return value


def with_priority(meta: dict | None, priority: Any, default: int | None = None) -> dict:
    """A copy of ``meta`` carrying the validated priority: ``priority`` if given, else the one
    already in ``meta``, else ``default``. With none of them, the copy carries no priority yet
    (``Queue.create_job`` then gives the job function's declared one, else the default, 5). The
    caller's dict is not changed.

    Usage: ``with_priority({"user": 7}, 0) == {"user": 7, "priority": 0}``
    """
    meta = meta or {}
    chosen = meta.get(PRIORITY_KEY) if priority is None else priority
    if chosen is None and default is None:
        return dict(meta)
    return {**meta, PRIORITY_KEY: validate_priority(default if chosen is None else chosen)}


def priority_of(job: Job) -> int:
    """The priority a job runs at: its stored priority, or the default for jobs rqplus never saw.

    Usage: ``priority_of(Job.fetch(job_id, connection=redis))``
    """
    stored = job.meta.get(PRIORITY_KEY)
    try:
        return validate_priority(stored)
    except (TypeError, ValueError):
        return DEFAULT_PRIORITY
