"""Job functions for tests, importable by worker subprocesses (run from the repo root).

Each records its run in the Redis list ``RAN_KEY`` of the worker's own connection, so a test can
read the order in which jobs really started.
"""

from __future__ import annotations

import enum
import os  # a module global, as real task modules have: forged names walk through it (tests.jobs.os.system)
import time
from dataclasses import dataclass
from os import getpid as reexported  # noqa: F401 -- defined in posix: a job naming tests.jobs.reexported is refused

from rq import Retry, get_current_job

from rqplus import task

from rqplus.priority import LEVELS, backlog_key, window_key

RAN_KEY = "test:ran"


def record(tag: str, seconds: float = 0.0) -> str:
    """Append ``tag`` to ``RAN_KEY`` when the job starts, then sleep ``seconds``."""
    get_current_job().connection.rpush(RAN_KEY, tag)
    time.sleep(seconds)
    return tag


def fail(tag: str) -> None:
    """Record ``tag``, then raise."""
    record(tag)
    raise RuntimeError(f"job {tag} failed on purpose")


def ran(connection) -> list[str]:
    """The tags recorded so far, in start order."""
    return [tag.decode() for tag in connection.lrange(RAN_KEY, 0, -1)]


WAITING_KEY = "test:waiting"


def record_waiting(tag: str, seconds: float = 0.0) -> str:
    """``record``, and also note the most urgent priority still waiting in this job's queue at start."""
    job = get_current_job()
    connection = job.connection
    in_window = [int(level) for level in connection.hvals(window_key(job.origin))]
    in_backlog = [level for level in LEVELS if connection.llen(backlog_key(job.origin, level))]
    connection.rpush(WAITING_KEY, min(in_window + in_backlog, default=99))
    return record(tag, seconds)


def count_run(tag: str, seconds: float = 0.0) -> str:
    """``record``, and count the runs of ``tag`` in ``test:runs`` (a hash tag -> runs)."""
    get_current_job().connection.hincrby("test:runs", tag, 1)
    return record(tag, seconds)


def crash_worker(tag: str) -> None:
    """Record, then SIGKILL this job's worker (the parent) and its work-horse (this process), as a crash would."""
    import os
    import signal

    record(tag)
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def fail_final(tag: str) -> None:
    """Record ``tag``, then fail for good: no retry, whatever the job's ``Retry`` says."""
    from rqplus.retry import stop_retries

    record(tag)
    stop_retries()
    raise ValueError(f"job {tag} cannot succeed")


@task(queue="tasked", priority=2, retry=Retry(max=3, interval=[1, 2, 3]), job_timeout=42, result_ttl=77,
      failure_ttl=88, ttl=99)
def tasked(tag: str) -> str:
    """Return ``tag``, or with ``"fail"`` fail for good (``fail_final``); declares task defaults."""
    if tag == "fail":
        fail_final(tag)
    return tag


class Recorder:
    """A class of an allowed module: its bound, static and class methods may run as jobs."""

    shell = staticmethod(os.system)  # a foreign function kept on an allowed class: refused as a job

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def bound(self, tag: str) -> str:
        """``record`` with the instance's prefix."""
        return record(self.prefix + tag)

    @staticmethod
    def static(tag: str) -> str:
        """``record``, as a static method."""
        return record(tag)

    @classmethod
    def klass(cls, tag: str) -> str:
        """``record``, as a class method."""
        return record(f"{cls.__name__}:{tag}")


async def record_async(tag: str) -> str:
    """``record`` from a coroutine function."""
    return record(tag)


#: Environment variable naming the file where ``note_run`` appends its tags.
RUNS_FILE_ENV = "RQPLUS_TEST_RUNS_FILE"


def note_run(tag: str, seconds: float = 0.0) -> str:
    """Append ``tag`` to the file ``$RQPLUS_TEST_RUNS_FILE`` as the job starts, then sleep ``seconds``.

    No Redis call: a run is counted even while Redis is down, and cannot fail because of it.
    """
    with open(os.environ[RUNS_FILE_ENV], "a") as out:
        out.write(f"{tag}\n")
    time.sleep(seconds)
    return tag


#: Environment variable with the Redis URL coroutine jobs record to (rq 2.12 has no current job in them).
REDIS_URL_ENV = "RQPLUS_TEST_REDIS_URL"


def _connection(job=None):
    from redis import Redis
    return job.connection if job is not None else Redis.from_url(os.environ[REDIS_URL_ENV])


async def sleep_async(tag: str, seconds: float = 0.0) -> str:
    """Record ``tag`` (as ``record``), then ``await asyncio.sleep(seconds)``: an I/O-bound coroutine job."""
    import asyncio
    _connection(get_current_job()).rpush(RAN_KEY, tag)
    await asyncio.sleep(seconds)
    return tag


def slow_first_run(tag: str, seconds: float) -> str:
    """``count_run``, sleeping ``seconds`` on the first run of ``tag`` only (a rescued re-run is quick)."""
    runs = get_current_job().connection.hincrby("test:runs", tag, 1)
    return record(tag, seconds if runs == 1 else 0.0)


def spin(seconds: float) -> None:
    """Busy Python code for ``seconds`` (a timeout interrupts it between instructions)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


async def sleep_async_first_run(tag: str, seconds: float) -> str:
    """``slow_first_run`` as a coroutine: ``await asyncio.sleep`` on the first run only."""
    import asyncio
    connection = _connection(get_current_job())
    runs = connection.hincrby("test:runs", tag, 1)
    connection.rpush(RAN_KEY, tag)
    await asyncio.sleep(seconds if runs == 1 else 0.0)
    return tag


def snapshot() -> dict:
    """What RQ has recorded of this running job: the fields of its hash and of its execution, its
    registry entries (the same whichever worker records them)."""
    job = get_current_job()
    connection = job.connection
    [entry] = [e.decode() for e in connection.zrange(job.started_job_registry.key, 0, -1)]
    execution_id = entry.rsplit(":", 1)[1]
    fields = {k.decode(): v for k, v in connection.hgetall(job.key).items()}
    execution = {k.decode() for k in connection.hgetall(f"rq:execution:{entry}")}
    return {"job fields": sorted(fields), "status": fields["status"].decode(), "execution fields": sorted(execution),
            "execution registry": [m.decode() for m in connection.zrange(f"rq:executions:{job.id}", 0, -1)]
            == [execution_id], "ttl": connection.ttl(job.key), "worker executions":
            connection.smembers(f"rq:worker:{fields['worker_name'].decode()}:executions") == {entry.encode()}}


def fail_first_run(tag: str) -> str:
    """``record``; the first run of ``tag`` raises, later ones return ``tag`` (a job its Retry saves)."""
    runs = get_current_job().connection.hincrby("test:runs", tag, 1)
    record(tag)
    if runs == 1:
        raise RuntimeError(f"first run of {tag} fails on purpose")
    return tag


def on_success(job, connection, result, *args, **kwargs) -> None:
    """A success callback: note the job's id and result in ``test:callbacks``."""
    connection.rpush("test:callbacks", f"{job.id}={result}")


class Target:
    """What forged pickles (tests/pickles.py) try to change: a class attribute of an allowed module."""

    mode = "original"


class Singleton:
    """A class whose constructor returns its one instance, which takes state through ``__setstate__``:
    an object that exists before a load."""

    _instance: Singleton | None = None

    def __new__(cls) -> Singleton:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class Registry(dict):
    """A dict whose constructor returns one shared instance: an object that exists before a load."""

    _instance: Registry | None = None

    def __new__(cls, *args: object) -> Registry:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            cls._instance["mode"] = "original"
        return cls._instance

    def __init__(self, *args: object) -> None:
        pass


class Journal(list):
    """A list whose constructor returns one shared instance, as ``Registry``."""

    _instance: Journal | None = None

    def __new__(cls, *args: object) -> Journal:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            cls._instance.append("original")
        return cls._instance

    def __init__(self, *args: object) -> None:
        pass


def fingerprint() -> dict:
    """Record (in ``test:fingerprints``) and return what forged pickles aim at, as this worker sees it."""
    import json

    from tests.pickles import fingerprint as seen

    found = seen()
    _connection(get_current_job()).rpush("test:fingerprints", json.dumps(found))
    return found


@dataclass
class Plain:
    """A dataclass of an allowed module, as jobs carry them."""

    amount: int
    tags: list


@dataclass(slots=True)
class Slotted:
    """A dataclass with slots (no __dict__): its state is set attribute by attribute."""

    amount: int
    note: str = "x"


@dataclass(frozen=True, slots=True)
class FrozenSlotted:
    """A frozen dataclass with slots: its state goes through the __setstate__ dataclasses add."""

    amount: int


class Colour(enum.Enum):
    """An Enum of an allowed module: a pickle names a member by its value."""

    RED = 1
    GREEN = "g"
