"""Job functions of ``bench_workers.py``: RQ workers run them by path (``"bench.jobs.noop"``), the peers
wrap them as a dramatiq actor or a huey task (``bench/peer_dramatiq.py``, ``bench/peer_huey.py``).

Every function has an ``async def`` twin named ``async_<name>`` for rqplus.AsyncWorker. The work:
``noop`` and ``sleep_50ms``. The markers write ``time.time()`` to the *clock* Redis
(``$BENCH_CLOCK_URL``), a second private server, so that the Redis under test counts only what the
worker sends: ``stamp`` at its start (one latency sample), ``first`` before its work and ``last``
after it (the ends of a timed drain).

Usage: ``rqplus.Queue("bench", connection=redis).enqueue("bench.jobs.first", "bench:first", "noop")``
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from redis import Redis

CLOCK_URL_ENV = "BENCH_CLOCK_URL"
SLEEP = 0.05  # seconds of the I/O-bound job

_clocks: dict[int, Redis] = {}  # per process: a forked work-horse must not share its parent's socket


def _clock() -> Redis:
    pid = os.getpid()
    if pid not in _clocks:
        _clocks[pid] = Redis.from_url(os.environ[CLOCK_URL_ENV])
    return _clocks[pid]


def _record(key: str) -> None:
    _clock().rpush(key, repr(time.time()))


def noop() -> None:
    """Do nothing: a drain of these measures the queue and the worker only."""


def sleep_50ms() -> None:
    """Block for 50 ms, as a job waiting on a network call would."""
    time.sleep(SLEEP)


async def async_noop() -> None:
    """``noop`` for an event loop."""


async def async_sleep_50ms() -> None:
    """``sleep_50ms`` for an event loop: yields to it for 50 ms."""
    await asyncio.sleep(SLEEP)


WORK: dict[str, Callable[[], None]] = {"noop": noop, "sleep_50ms": sleep_50ms}
ASYNC_WORK: dict[str, Callable[[], Awaitable[None]]] = {"noop": async_noop, "sleep_50ms": async_sleep_50ms}


def stamp(key: str) -> None:
    """Record the time this job started at in the clock Redis list ``key``."""
    _record(key)


def first(key: str, work: str) -> None:
    """Record the start time, then do ``work`` (a name in ``WORK``): the first job of a drain."""
    _record(key)
    WORK[work]()


def last(key: str, work: str) -> None:
    """Do ``work``, then record the end time: the last job of a drain."""
    WORK[work]()
    _record(key)


async def async_stamp(key: str) -> None:
    """``stamp`` for an event loop."""
    _record(key)


async def async_first(key: str, work: str) -> None:
    """``first`` for an event loop."""
    _record(key)
    await ASYNC_WORK[work]()


async def async_last(key: str, work: str) -> None:
    """``last`` for an event loop."""
    await ASYNC_WORK[work]()
    _record(key)
