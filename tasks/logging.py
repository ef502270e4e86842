"""Event logging off the request path: producers push to Redis, one consumer appends JSON lines to a file.

:func:`log_event` costs one ``RPUSH`` (no job per event): the record (``id``, ``ts``, ``event``,
``fields``) goes onto the Redis list ``EVENTS_KEY``. A consumer appends records to the sink,
``$EVENT_LOG_PATH`` (default ``./.rqplus/events.jsonl``), one JSON object per line, a batch at a
time: it reads a batch with ``LRANGE`` (the records stay in Redis), writes and fsyncs it, and only
then trims it from the list. A consumer killed at any point loses nothing: the next one writes the
unacknowledged batch again (**at least once**: a line may appear twice, so readers dedupe by
``id``), after cutting off a half-written last line. One consumer drains at a time, holding the
lease ``LEASE_KEY`` (renewed with each batch, so a dead consumer's lease lapses within
``lease_seconds``); the trim checks the lease in the same script, so a consumer that lost its
lease can cause duplicates, never a loss.

Two ways to consume: :func:`drain_events`, an rqplus job (``drain_events.delay()`` on the
``events`` queue, say every minute from a scheduler), or :func:`run_consumer`, a blocking loop
(``python -m tasks.logging``) that sleeps in ``BLMOVE`` until events arrive.

This module is ``tasks.logging``: imports are absolute, so ``import logging`` here and everywhere
is the standard library's. Run it with ``-m``, never as ``python tasks/logging.py`` (which would
put ``tasks/`` first on ``sys.path``; the guard below refuses).

Usage::

    from tasks.logging import log_event
    log_event("User logged in", user_id="user_123")

and a consumer: ``python -m tasks.logging`` (``--burst`` to drain and exit).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # `python tasks/logging.py`: tasks/ is sys.path[0]
    sys.exit("run the event consumer as a module, from the project root: python -m tasks.logging")

import argparse  # noqa: E402  (after the guard: it must run before `import logging` can shadow)
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from redis import Redis  # noqa: E402
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError  # noqa: E402
from rq import get_current_job  # noqa: E402

from rqplus import task  # noqa: E402
from rqplus.connections import connect, redact, redis_url, shared  # noqa: E402
from rqplus.defaults import DEFAULT_DATA_DIR  # noqa: E402
from rqplus.functions import Function, Library  # noqa: E402

#: The queue drain jobs go to (``drain_events.delay()``).
QUEUE = "events"
#: The Redis list producers push event records onto (JSON objects, oldest first).
EVENTS_KEY = "rqplus:events"
#: Held (with a random token) by the one consumer draining ``EVENTS_KEY`` now.
LEASE_KEY = "rqplus:events:lease"
#: Environment variable naming the sink file; default ``DEFAULT_PATH`` (relative to the working directory).
PATH_ENV = "EVENT_LOG_PATH"
DEFAULT_PATH = Path(DEFAULT_DATA_DIR) / "events.jsonl"
#: Records per batch: one write and one fsync each.
DEFAULT_BATCH_SIZE = 1000
#: A consumer's lease lapses this long after its last batch or wait (when it died, say).
LEASE_SECONDS = 10.0
#: Longest single wait for events in :func:`run_consumer` (it renews the lease between waits).
WAIT_SECONDS = 1.0

log = logging.getLogger(__name__)

# Acknowledge the previous batch, renew the lease, read the next batch: one round trip per batch.
# KEYS[1] = EVENTS_KEY
# KEYS[2] = LEASE_KEY
# ARGV[1] = this consumer's lease token
# ARGV[2] = lease time to live, in milliseconds
# ARGV[3] = records of the previous batch to trim from the head (written and fsynced), or 0
# ARGV[4] = records to read for the next batch, or 0 for none
# Returns the next batch (possibly empty), or false when the lease is not ours (nothing trimmed).
NEXT_BATCH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local done, size = tonumber(ARGV[3]), tonumber(ARGV[4])
if done > 0 then redis.call('LTRIM', KEYS[1], done, -1) end
if size == 0 then return {} end
return redis.call('LRANGE', KEYS[1], 0, size - 1)
"""

# Give the lease up, if it is still ours.
# KEYS[1] = LEASE_KEY
# ARGV[1] = this consumer's lease token
# Returns 1 if released, 0 if it was not ours (any more).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
#: This module's Redis functions (see tasks.payments.FUNCTIONS).
FUNCTIONS = Library("tasks_logging", {"next_batch": Function(NEXT_BATCH), "release": Function(RELEASE)})


class LeaseLost(RuntimeError):
    """Another consumer took over the events (this one paused longer than its lease)."""


def _record(event: str, fields: dict[str, Any]) -> tuple[str, str]:
    """The event's id and its JSON record; ``TypeError``/``ValueError`` for bad input."""
    if not isinstance(event, str):
        raise TypeError(f"an event must be a str, not {type(event).__name__}")
    if not event.strip():
        raise ValueError("an event must be a non-empty str, like 'User logged in'")
    event_id = uuid.uuid4().hex
    record = {"id": event_id, "ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
              "event": event, "fields": fields}
    try:
        return event_id, json.dumps(record, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        for name, value in fields.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as error:
                raise TypeError(f"field {name!r} of event {event!r} cannot be logged: it is not JSON "
                                f"({error}); log a str, number, bool, None, list or dict of those") from None
        raise


def log_event(event: str, /, *, connection: Redis | None = None, **fields: Any) -> str:
    """Record ``event`` with ``fields`` for the consumer: one ``RPUSH``. Returns the event's id.

    ``event`` is a non-empty str (``ValueError``, ``TypeError``); each field must be JSON
    (``TypeError`` naming the field); nothing is written for bad input. Fields are kept under
    ``"fields"`` in the record, so any name is free except ``connection``, the Redis to use:
    default ``rqplus.connections.shared()`` (``REDIS_URL``, read at each call), one client per
    URL. A pipeline works too (``connection=pipe``: events go when it executes).

    Usage: ``log_event("User logged in", user_id="user_123")``
    """
    if connection is not None and not isinstance(connection, Redis):
        raise TypeError(f"connection= must be a redis.Redis or pipeline, not {type(connection).__name__}: "
                        "it is reserved; log that field under another name")
    event_id, record = _record(event, fields)
    (connection if connection is not None else shared()).rpush(EVENTS_KEY, record)
    return event_id


def sink_path(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$EVENT_LOG_PATH``, else ``DEFAULT_PATH``.

    Usage: ``sink_path()  # -> PosixPath('.rqplus/events.jsonl')``
    """
    return Path(path or os.environ.get(PATH_ENV) or DEFAULT_PATH)


class Sink:
    """The JSON-lines file, opened for appending by the lease holder; each batch is fsynced.

    On open, a last line without its newline (the consumer before was killed mid-write) is cut
    off: it belongs to a batch that was never acknowledged, which is written again whole.

    Usage: ``with Sink(sink_path()) as sink: sink.append([b'{"id": ...}'])``
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> Sink:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        if created:  # the new file's directory entry must survive a crash too
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self._cut_partial_line()
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)
        self.fd = -1

    def _cut_partial_line(self, chunk: int = 65536) -> None:
        size = end = os.fstat(self.fd).st_size
        if size == 0 or os.pread(self.fd, 1, size - 1) == b"\n":
            return
        keep = 0
        while end > 0:
            start = max(0, end - chunk)
            newline = os.pread(self.fd, end - start, start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        os.ftruncate(self.fd, keep)
        os.fsync(self.fd)
        log.warning("Event sink %s: cut off a half-written last line (%d bytes); its batch is written again",
                    self.path, size - keep)

    def append(self, records: list[bytes]) -> None:
        """Append one line per record and fsync."""
        data = memoryview(b"\n".join(records) + b"\n")
        while data:
            data = data[os.write(self.fd, data):]
        os.fsync(self.fd)


class Consumer:
    """Drains ``EVENTS_KEY`` into a :class:`Sink` while holding the lease.

    Usage::

        consumer = Consumer(redis, sink_path())
        if consumer.acquire():
            try:
                consumer.drain()
            finally:
                consumer.release()
    """

    def __init__(self, connection: Redis, path: Path, batch_size: int = DEFAULT_BATCH_SIZE,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        if batch_size < 1 or lease_seconds <= 0:
            raise ValueError("batch_size must be >= 1 and lease_seconds > 0")
        self.connection, self.path, self.batch_size = connection, path, batch_size
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self.token = ""
        self.written = 0  # records appended by this consumer, over all its drains

    def acquire(self) -> bool:
        """Take the lease if no consumer holds it; True if taken."""
        token = secrets.token_hex(16)  # new per acquisition: a trim can only ack this lease's batches
        if self.connection.set(LEASE_KEY, token, nx=True, px=self.lease_ms):
            self.token = token
            return True
        return False

    def release(self) -> None:
        """Give the lease up (if still ours), so the next consumer need not wait for it to lapse."""
        FUNCTIONS.call(self.connection, "release", [LEASE_KEY], [self.token])
        self.token = ""

    def _next_batch(self, done: int, size: int) -> list[bytes]:
        batch = FUNCTIONS.call(self.connection, "next_batch", [EVENTS_KEY, LEASE_KEY],
                               [self.token, self.lease_ms, done, size])
        if batch is None:
            raise LeaseLost(f"the lease on {EVENTS_KEY} went to another consumer; {done} records written "
                            "but not acknowledged will be written again by it")
        return batch

    def drain(self, max_batches: int | None = None, stop: threading.Event | None = None) -> int:
        """Write batches until the list is empty, ``max_batches`` are written or ``stop`` is set (checked
        between batches: producers as fast as the drain must not keep SIGTERM waiting); returns the
        records written.

        Raises ``LeaseLost`` if another consumer took the lease meanwhile.

        Usage: ``consumer.drain(max_batches=10)``
        """
        before, done, batches = self.written, 0, 0
        with Sink(self.path) as sink:
            while True:
                enough = (max_batches is not None and batches >= max_batches) or (stop is not None and stop.is_set())
                batch = self._next_batch(done, 0 if enough else self.batch_size)  # acknowledges the batch before
                if not batch:
                    return self.written - before
                sink.append(batch)
                done = len(batch)
                self.written += done
                batches += 1

    def wait_for_events(self, timeout: float) -> None:
        """Block until ``EVENTS_KEY`` is non-empty or ``timeout`` s pass; renews the lease afterwards.

        ``BLMOVE`` from the list's head back to its head: it wakes on the first push and changes
        nothing (Redis >= 6.2; :func:`drain_events` alone works with Redis 5).
        """
        self.connection.blmove(EVENTS_KEY, EVENTS_KEY, timeout, src="LEFT", dest="LEFT")
        self._next_batch(0, 0)


def _connection(connection: Redis | None) -> Redis:
    if connection is not None:
        return connection
    job = get_current_job()  # as a job, drain the Redis the worker runs on
    return job.connection if job is not None else shared()


@task(queue=QUEUE)
def drain_events(max_batches: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, *,
                 path: str | os.PathLike | None = None, connection: Redis | None = None,
                 lease_seconds: float = LEASE_SECONDS) -> int:
    """The drain job: append queued events to the sink, then return how many were written.

    Returns 0 at once when another consumer holds the lease (it is draining already), so it is
    safe to trigger often. ``path`` defaults to :func:`sink_path`; ``connection`` to the running
    job's, else ``REDIS_URL``'s. ``max_batches`` bounds one run (None: until the list is empty).

    ``drain_events.delay()`` enqueues it on the ``events`` queue.

    Usage: ``drain_events.delay()`` or ``Queue("events", connection=redis).enqueue("tasks.logging.drain_events")``
    """
    consumer = Consumer(_connection(connection), sink_path(path), batch_size, lease_seconds)
    if not consumer.acquire():
        log.info("Events are being drained by another consumer; nothing to do")
        return 0
    try:
        return consumer.drain(max_batches)
    finally:
        consumer.release()


def run_consumer(batch_size: int = DEFAULT_BATCH_SIZE, *, path: str | os.PathLike | None = None,
                 connection: Redis | None = None, lease_seconds: float = LEASE_SECONDS, burst: bool = False,
                 stop: threading.Event | None = None) -> int:
    """Drain events as they arrive until ``stop`` is set (or, with ``burst``, until none are left).

    Waits for the lease while another consumer holds it (a standby), then alternates draining and
    blocking in ``BLMOVE`` (at most ``WAIT_SECONDS`` or half the lease at a time, renewing the
    lease in between). Rides out a lost lease or a Redis outage: it logs, waits and starts over.
    Returns the records written.

    Usage: ``run_consumer(path="/var/log/app/events.jsonl")``
    """
    consumer = Consumer(_connection(connection), sink_path(path), batch_size, lease_seconds)
    stop = stop or threading.Event()
    wait = min(WAIT_SECONDS, lease_seconds / 2)
    while not stop.is_set():
        try:
            if consumer.acquire():
                try:
                    log.info("Consumer holds the lease on %s; appending to %s", EVENTS_KEY, consumer.path)
                    while not stop.is_set():
                        count = consumer.drain(stop=stop)
                        if count:
                            log.info("Appended %d events to %s", count, consumer.path)
                        if burst:
                            return consumer.written
                        consumer.wait_for_events(wait)
                finally:
                    consumer.release()
        except (LeaseLost, RedisConnectionError, RedisTimeoutError) as error:
            log.warning("Event consumer: %s: %s; starting over", type(error).__name__, error)
        stop.wait(wait)
    return consumer.written


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.logging``: run :func:`run_consumer` until SIGTERM or Ctrl-C (exit 0).

    Usage: ``python -m tasks.logging --burst --path /tmp/events.jsonl``
    """
    parser = argparse.ArgumentParser(prog="python -m tasks.logging",
                                     description="Append logged events to the sink, as JSON lines, until stopped.")
    parser.add_argument("--url", help="Redis URL (default: $REDIS_URL, else redis://127.0.0.1:6379/0)")
    parser.add_argument("--path", help=f"sink file (default: ${PATH_ENV}, else {DEFAULT_PATH})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="records per write and fsync")
    parser.add_argument("--lease-seconds", type=float, default=LEASE_SECONDS,
                        help="how long a killed consumer's lease blocks the next one")
    parser.add_argument("--burst", action="store_true", help="drain what is there, then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # finish the batch being written, release the lease
        signal.signal(signum, lambda *_: stop.set())
    url = redis_url(args.url)
    log.info("Event consumer for %s (%s)", redact(url), EVENTS_KEY)
    run_consumer(args.batch_size, path=args.path, connection=connect(url), lease_seconds=args.lease_seconds,
                 burst=args.burst, stop=stop)


if __name__ == "__main__":
    main()
