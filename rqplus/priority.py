"""Job priority: the accepted range, validation, and where queued jobs wait in priority order.

A job's priority is ``job.meta["priority"]``. A queue keeps its waiting jobs in two places:

* the *window*: RQ's own LIST ``rq:queue:<name>``, holding the most urgent jobs (at most
  ``rqplus.scripts.WINDOW``) in run order, so RQ's dequeue, ``rq info`` and rq-dashboard read an
  ordered list; the priority of each job in it is kept beside it (:func:`window_key`), and how
  many of its jobs each level has (:func:`window_counts_key`), so the Lua insert finds a job's
  place without reading job hashes or searching;
* the *backlog*: one FIFO list per priority level (:func:`backlog_key`) holding the rest. Every job
  in the window runs before every job in the backlog; each rqplus pop refills the window.

So an insert costs O(window), never O(backlog). The Lua that keeps this order is ``_INSERT`` in
:mod:`rqplus.scripts`; ``rqplus.Queue`` counts and lists both parts as one queue.

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

#: Key under which the priority is kept in ``job.meta``.
PRIORITY_KEY = "priority"
#: Every priority level, most urgent first.
LEVELS = range(MIN_PRIORITY, MAX_PRIORITY + 1)

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


def window_key(queue_name: str) -> str:
    """The hash of job id -> priority for the jobs in a queue's window (its RQ list).

    Usage: ``window_key("emails") == "rqplus:window:emails"``
    """
    return f"rqplus:window:{queue_name}"


def window_counts_key(queue_name: str) -> str:
    """The hash of level -> how many jobs of that level are in a queue's window (the Lua insert's
    index, without a search).

    Usage: ``window_counts_key("emails") == "rqplus:window:emails:levels"``
    """
    return f"{window_key(queue_name)}:levels"


def backlog_prefix(queue_name: str) -> str:
    """The key prefix of a queue's backlog lists; the level's number completes the key.

    Usage: ``backlog_prefix("emails") == "rqplus:backlog:emails:"``
    """
    return f"rqplus:backlog:{queue_name}:"


def backlog_key(queue_name: str, level: int) -> str:
    """The backlog list of one priority level of a queue: its jobs beyond the window, FIFO.

    Usage: ``backlog_key("emails", 9) == "rqplus:backlog:emails:9"``
    """
    return f"{backlog_prefix(queue_name)}{level}"
