"""Redis faults that rqplus waits out instead of failing: unreachable, loading its data, out of
memory, busy running a script.

A worker meets them on every Redis call of its loop: a restart (connection refused, then
``LOADING`` while it reads its append-only file), a network cut (timeouts), a full ``maxmemory``
with ``noeviction`` (every write refused), a script or function running past
``busy-reply-threshold`` (``BUSY`` to every other command until it ends or an operator kills it).
None is a reason to quit or to fail a job: the call is made again, with backoff, until Redis
serves it.

Usage::

    from rqplus.faults import wait_out
    wait_out(lambda: redis.hset(key, "state", "idle"), log, "Worker w1")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from redis._parsers.base import BaseParser
from redis.exceptions import BusyLoadingError, ConnectionError, OutOfMemoryError, ResponseError, TimeoutError

T = TypeVar("T")


class BusyScriptError(ResponseError):
    """Redis answered ``BUSY``: a script or function has run past ``busy-reply-threshold``."""


# redis-py raises a plain ResponseError for BUSY; a class of its own lets `except` clauses tell it
# apart (a subclass of the same error: code that caught ResponseError still does)
BaseParser.EXCEPTION_CLASSES.setdefault("BUSY", BusyScriptError)

#: Redis cannot be reached for now (restarting, network): BusyLoadingError (LOADING) is one of them.
REDIS_DOWN = (ConnectionError, TimeoutError)
#: Every fault a worker waits out.
TRANSIENT = (*REDIS_DOWN, OutOfMemoryError, BusyScriptError)
#: Longest pause between two attempts (seconds), so that work resumes within seconds of a restart.
MAX_WAIT = 5.0


def diagnosis(error: Exception) -> str:
    """What is wrong with Redis and what fixes it, in one line for the log.

    Usage: ``log.error("Worker w1: %s", diagnosis(error))``
    """
    if isinstance(error, OutOfMemoryError):
        return ("Redis is out of memory (maxmemory reached, maxmemory-policy noeviction), every write is refused: "
                "raise maxmemory (CONFIG SET maxmemory ...) or free memory; finished and failed jobs are kept "
                "result_ttl / failure_ttl seconds. Pausing until writes succeed")
    if isinstance(error, BusyLoadingError):
        return "Redis is loading its data after a restart. Waiting for it"
    if isinstance(error, BusyScriptError):
        return ("Redis is busy running a script or function past busy-reply-threshold, and answers BUSY: "
                "waiting for it to end (an operator can stop a read-only one: FUNCTION KILL / SCRIPT KILL)")
    # RQ's own wording, which operators (and tests) already look for
    return f"could not connect to Redis instance: {error}; retrying"


def wait_out(call: Callable[[], T], log: logging.Logger, who: str, first: float = 1.0, factor: float = 2.0,
             cap: float = MAX_WAIT, faults: tuple[type[Exception], ...] = TRANSIENT,
             give_up_after: float | None = None) -> T:
    """``call()``, made again after a pause (``first`` s, times ``factor``, at most ``cap``) while
    it raises one of ``faults`` (default: Redis unreachable, loading, out of memory or busy), for at most
    ``give_up_after`` seconds (default: for ever; then the last fault is raised). Each kind of
    fault is logged once, and the recovery too. Other errors propagate, and so do signals'
    exceptions (a stop request).

    Usage: ``wait_out(lambda: redis.ping(), logging.getLogger("x"), "Worker w1")``
    """
    pause, logged = first, None
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        try:
            result = call()
        except faults as error:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            kind = type(error)
            if kind is not logged:
                log.error("%s: %s", who, diagnosis(error))
                logged = kind
            time.sleep(pause)
            pause = min(pause * factor, cap)
            continue
        if logged is not None:
            log.warning("%s: Redis serves again, carrying on", who)
        return result
