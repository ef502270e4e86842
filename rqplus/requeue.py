"""Bulk requeue of failed jobs as a resumable **run**, driven in batches, its state in Redis.

A run is a queue and optional filters (:class:`Filters`: the job function's dotted name, the
exception's type name; the one filter rule of the dashboard's failed-jobs page too). Its state is
a hash, ``rqplus:requeue:<run id>`` (queue, filters, total, examined, done, skipped, cursor,
status, times), so any process sees its progress. The process driving it holds
``rqplus:requeue:<run id>:owner``, a key it renews with each batch and that expires
:data:`HEARTBEAT_TTL` seconds after its last one: a run whose owner key is gone while its status
is still ``running`` was left by a dead process, and the next dashboard start or
``rqplus requeue --resume`` takes it over (:func:`orphaned`, :func:`claim`).

Each batch reads up to ``batch_size`` ids from the failed registry with the job fields the
filters need (one ``SORT_RO ... GET`` round trip, see :func:`_read`), and hands the matching ids to
``rqplus.Queue.requeue_failed_many``, which puts each back at its own priority. A requeued job
leaves the failed registry, so examining it again is harmless: no job is requeued twice. The
cursor is the last examined job still in the registry (kept: it did not match, or could not be
requeued), found again by ZRANK, so a resumed run starts where its owner stopped instead of
re-reading the ids it kept. Jobs that fail after the run started (scored later than its
``until`` bound) are left for the next run, so a run ends even while workers keep failing jobs.

Before requeueing a batch, its ids are noted (``rqplus:requeue:<run id>:pending``): whoever
resumes a run whose driver was killed mid-batch counts what that batch requeued from the note
first, so the counts stay exact.

Jobs whose meta the dashboard could not load, or whose requeue would rewrite their meta in another
format, are skipped (counted in ``skipped``): RQ's requeue saves the job hash back.

**One run per queue at a time.** ``rqplus:requeue:active:<queue>`` names the run going through the
queue's failed registry; :func:`start` sets it with ``SET NX`` (so of any number of processes
starting at once, one does) and a second start **joins** that run instead of starting another:
it gets the running run back, whatever filters it asked for. The key is written with a short TTL
and made permanent in the transaction that records the run (a starter that dies in between frees
the queue within :data:`STARTING_TTL` seconds), and deleted in the transaction that ends the run.

Usage::

    from rqplus.requeue import Filters, follow, new_owner, start
    run, started = start(redis, "emails", Filters(exception="TimeoutError"))   # started False: joined
    run = follow(redis, run.id, new_owner())     # drives it, or watches whoever does, to its end
    print(f"requeued {run.done} of {run.total}")
"""

from __future__ import annotations

import base64
import os
import re
import socket
import time
import uuid
import weakref
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from redis import ConnectionPool, Redis
from redis.exceptions import ResponseError
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.utils import as_text

from rqplus.exceptions import RequeueBusyError, UnknownQueueError
from rqplus.queue import Queue
from rqplus.serializers import RestrictedPickleSerializer, SafeSerializer, serializer_for, withheld_in
from rqplus.unpickling import inflated

#: Each run's hash is ``RUN_KEY_PREFIX + run id``; its owner's heartbeat key adds ``:owner``.
RUN_KEY_PREFIX = "rqplus:requeue:"
#: Every run's id, scored by its start time (newest last).
RUNS_KEY = "rqplus:requeue:runs"
#: Failed-registry ids read, filtered and requeued per round trip.
BATCH_SIZE = 1000
#: Seconds an owner's heartbeat lives: a run not heard of for this long is resumable.
HEARTBEAT_TTL = 15
#: Seconds a finished run's hash is kept (its progress page and ``rqplus requeue`` history).
FINISHED_TTL = 7 * 24 * 3600
#: Runs listed at most (the index is trimmed to this many at each start).
RUNS_KEPT = 100
#: ``ACTIVE_KEY_PREFIX + queue`` holds the id of the run requeueing that queue's failed jobs now.
ACTIVE_KEY_PREFIX = "rqplus:requeue:active:"
#: Seconds a queue's active key lives until its run is recorded (it is then kept until the run ends).
STARTING_TTL = 60
#: Seconds :func:`start` waits for a run another process is starting to be recorded, to join it.
JOIN_WAIT = 5.0
#: Seconds between two looks at a run :func:`follow` watches.
FOLLOW_POLL = 0.5
RUNNING, DONE, FAILED = "running", "done", "failed"
#: Clients whose Redis refused ``SORT_RO ... GET`` (see :func:`_read`).
_SORT_REFUSED: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
#: A run id: the start time in seconds, then 8 hex digits.
_RUN_ID = re.compile(r"[0-9]+-[0-9a-f]{8}")
#: An exception's (dotted) type name, as tracebacks print it.
_TYPE_NAME = re.compile(r"[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class Filters:
    """Which failed jobs a requeue takes: each filter given must equal the job's (exact names;
    None: any): its queue, its function's dotted name, its exception's type name.

    Usage: ``Filters(exception="TimeoutError").matches("emails", "tasks.emails.send", "TimeoutError")``
    """

    queue: str | None = None
    function: str | None = None
    exception: str | None = None

    def matches(self, queue: str, function: str, exception: str) -> bool:
        """True when every filter given matches the job's queue, function and exception type.

        Usage: ``[job for job in jobs if Filters(function="tasks.a").matches(job.queue, job.function, job.exception)]``
        """
        return all(wanted is None or wanted == value
                   for wanted, value in ((self.queue, queue), (self.function, function), (self.exception, exception)))

    def describe(self) -> str:
        """The filters given, for people: ``"queue=emails, exception=TimeoutError"``, or ``"(all)"``.

        Usage: ``f"failed jobs {filters.describe()}"``
        """
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name)) or "(all)"


def function_name(data: bytes | None) -> str:
    """The dotted name of a job's function from its (decompressed) ``data``, read safely; ``"?"``
    when it cannot be read.

    Usage: ``function_name(job.data) == "tasks.emails.send_email"``
    """
    try:
        name = SafeSerializer.loads(data)[0] if data else None
    except Exception:  # unreadable job data (RQ raises DeserializationError for it): still listed
        return "?"
    return name if isinstance(name, str) and name else "?"


def exception_type(exc_text: str | None) -> str:
    """The exception's type name from a traceback or ``"Type: message"`` text; "" when there is none.

    The type heads the first unindented line after the last traceback's frames (the message,
    secrets included, may run on over more lines): only a dotted name is taken from it.

    Usage: ``exception_type("Traceback ...\\n  File ...\\nValueError: bad\\ninput") == "ValueError"``
    """
    lines = (exc_text or "").splitlines()
    start = max((n for n, line in enumerate(lines) if line.startswith("Traceback")), default=-1) + 1
    line = next((line for line in lines[start:] if line.strip() and not line[0].isspace()), "")
    name = line.split(":", 1)[0].strip()
    return name if _TYPE_NAME.fullmatch(name) else ""


def result_exc_string(entries: list[Any]) -> str | None:
    """The exception text of a job's latest result, from its stream's ``XREVRANGE ... COUNT 1``
    reply (RQ stores it compressed); None when there is none.

    Usage: ``result_exc_string(redis.xrevrange(Result.get_key(job_id), "+", "-", count=1))``
    """
    stored = entries[0][1].get(b"exc_string") if entries else None
    return zlib.decompress(base64.b64decode(stored)).decode(errors="replace") if stored else None


def stored_exc_info(raw: bytes | None) -> str | None:
    """A job hash's ``exc_info`` field as text (RQ compresses it; older writers did not).

    Usage: ``stored_exc_info(redis.hget(job.key, "exc_info"))``
    """
    if not raw:
        return None
    try:
        raw = zlib.decompress(raw)
    except zlib.error:
        pass
    return raw.decode(errors="replace")


def unsafe_meta(meta: Any) -> str | None:
    """Why requeueing would change a job's meta (as :class:`~rqplus.serializers.SafeSerializer`
    loaded it, since RQ's requeue saves it back), or None when it is plain data.

    Usage: ``unsafe_meta(job.meta) is None``
    """
    withheld = withheld_in(meta)
    if withheld:
        return f"meta the dashboard does not load ({', '.join(withheld)})"
    if not isinstance(meta, dict) or "unserialized" in meta:  # RQ's stand-in for meta it could not load
        return "meta that cannot be read (requeueing would replace it)"
    return None


@dataclass
class Run:
    """A bulk requeue's state, as stored in its hash. ``total``: failed jobs in the registry when
    it started; ``examined``: ids looked at; ``done``: requeued; ``skipped``: matching but not
    requeued (gone meanwhile, or meta it would change).

    Usage: ``load(redis, run_id).progress``
    """

    id: str
    queue: str
    function: str | None = None
    exception: str | None = None
    total: int = 0
    examined: int = 0
    done: int = 0
    skipped: int = 0
    until: float = 0.0
    cursor_id: str | None = None
    cursor_score: float = 0.0
    status: str = RUNNING
    error: str = ""
    user: str = ""
    ip: str = ""
    started_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0

    @property
    def key(self) -> str:
        """This run's hash."""
        return run_key(self.id)

    @property
    def filters(self) -> Filters:
        """The queue and filters this run requeues by."""
        return Filters(self.queue, self.function, self.exception)

    @property
    def criteria(self) -> str:
        """The function and exception filters, for people: ``"exception=TimeoutError"`` or ``"(all)"``."""
        return Filters(None, self.function, self.exception).describe()

    @property
    def running(self) -> bool:
        """True until the run is done or failed."""
        return self.status == RUNNING

    @property
    def progress(self) -> float:
        """The share of the registry examined, 0.0 to 1.0 (1.0 once done)."""
        if not self.running:
            return 1.0
        return min(self.examined / self.total, 1.0) if self.total else 0.0

    @property
    def seconds(self) -> float:
        """Seconds from the start to the end (or to the latest batch, while running)."""
        return max((self.finished_at or self.updated_at or self.started_at) - self.started_at, 0.0)

    @property
    def rate(self) -> float:
        """Jobs requeued per second so far."""
        return self.done / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        """One line for people: ``requeued 3 of 5 failed jobs in 0.2 s``.

        Usage: ``click.echo(run.summary())``
        """
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return f"requeued {self.done} of {self.total} failed jobs in {self.seconds:.1f} s{skipped}"


_NUMBERS = {f.name for f in fields(Run) if f.type in ("int", "float")}


def run_key(run_id: str) -> str:
    """The hash of run ``run_id``.

    Usage: ``redis.hgetall(run_key(run.id))``
    """
    return f"{RUN_KEY_PREFIX}{run_id}"


def owner_key(run_id: str) -> str:
    """The heartbeat key of the process driving run ``run_id``.

    Usage: ``redis.get(owner_key(run.id))``
    """
    return f"{run_key(run_id)}:owner"


def pending_key(run_id: str) -> str:
    """The ids run ``run_id`` is requeueing right now (a list, gone between batches).

    Usage: ``redis.lrange(pending_key(run.id), 0, -1)``
    """
    return f"{run_key(run_id)}:pending"


def new_owner() -> str:
    """A token naming this process (host, pid) uniquely, to claim runs with.

    Usage: ``claim(redis, run.id, new_owner())``
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def queue_exists(connection: Redis, queue: str) -> bool:
    """True when Redis knows ``queue`` (RQ's set of queues) or it holds failed jobs.

    Usage: ``queue_exists(redis, "emails")``
    """
    registry = FailedJobRegistry(queue, connection=connection)
    return bool(connection.sismember(Queue.redis_queues_keys, Queue(queue, connection=connection).key)
                or connection.exists(registry.key))


def active_key(queue: str) -> str:
    """The key naming the run that requeues ``queue``'s failed jobs now.

    Usage: ``redis.get(active_key("emails"))``
    """
    return f"{ACTIVE_KEY_PREFIX}{queue}"


def active(connection: Redis, queue: str) -> Run | None:
    """The run requeueing ``queue``'s failed jobs now, or None.

    Usage: ``active(redis, "emails").progress``
    """
    run_id = connection.get(active_key(queue))
    run = load(connection, as_text(run_id)) if run_id else None
    return run if run is not None and run.running else None


def start(connection: Redis, queue: str, filters: Filters | None = None, *, user: str = "",
          ip: str = "") -> tuple[Run, bool]:
    """Start a run over ``queue``'s failed jobs (``filters``' queue is ignored), or join the one
    already running there: returns the run and True when this call started it. A run is driven by
    whoever claims it (:func:`claim`, :func:`drive`, :func:`follow`). Raises
    :class:`UnknownQueueError` for a queue Redis does not know, :class:`RequeueBusyError` when the
    queue's active key names no running run (a run being started for more than :data:`JOIN_WAIT`
    seconds, or one deleted by hand).

    Usage: ``run, started = start(redis, "emails", Filters(function="tasks.emails.send"), user="admin")``
    """
    if not queue_exists(connection, queue):
        raise UnknownQueueError(f"no queue {queue!r}: Redis knows no such queue")
    filters = filters or Filters()
    key = active_key(queue)
    deadline = time.monotonic() + JOIN_WAIT
    while True:
        run_id = connection.get(key)
        if run_id is None:
            run = _new_run(connection, queue, filters, user, ip)
            if connection.set(key, run.id, nx=True, ex=STARTING_TTL):
                with connection.pipeline() as pipe:
                    pipe.hset(run.key, mapping=_stored(run))
                    pipe.zadd(RUNS_KEY, {run.id: run.started_at})
                    pipe.zremrangebyrank(RUNS_KEY, 0, -RUNS_KEPT - 1)
                    pipe.persist(key)
                    pipe.execute()
                return run, True
            continue  # another process started one just now: join it
        running = load(connection, as_text(run_id))
        if running is not None and running.running:
            return running, False
        if time.monotonic() > deadline:
            state = "no longer exists" if running is None else f"is {running.status}"
            raise RequeueBusyError(f"{key} names run {as_text(run_id)}, which {state}: a bulk requeue of queue "
                                   f"{queue!r} is being started, or its run was deleted by hand (then delete {key})")
        time.sleep(0.05)  # recorded in the starter's next round trip


def _new_run(connection: Redis, queue: str, filters: Filters, user: str, ip: str) -> Run:
    """A run over ``queue``'s failed registry as it is now (its size, its last score), not recorded yet."""
    registry_key = FailedJobRegistry(queue, connection=connection).key
    with connection.pipeline(transaction=False) as pipe:
        pipe.zcard(registry_key)
        pipe.zrange(registry_key, -1, -1, withscores=True)
        pipe.time()
        total, last, (seconds, micros) = pipe.execute()
    now = seconds + micros / 1e6
    return Run(id=f"{int(now)}-{uuid.uuid4().hex[:8]}", queue=queue, function=filters.function,
               exception=filters.exception, total=total, until=last[0][1] if last else 0.0, user=user, ip=ip,
               started_at=now, updated_at=now)


def _stored(run: Run) -> dict[str, str | int | float]:
    return {f.name: "" if getattr(run, f.name) is None else getattr(run, f.name) for f in fields(Run)}


def load(connection: Redis, run_id: str) -> Run | None:
    """The run ``run_id`` as stored, or None when there is none (unknown, or expired).

    Usage: ``load(redis, run_id).status``
    """
    return _restore(run_id, connection.hgetall(run_key(run_id)))


def _restore(run_id: str, stored: dict[bytes, bytes]) -> Run | None:
    if not stored:
        return None
    values: dict[str, Any] = {as_text(name): as_text(value) for name, value in stored.items()}
    values = {name: value for name, value in values.items() if name in Run.__dataclass_fields__}
    for name in _NUMBERS & values.keys():
        values[name] = float(values[name] or 0) if Run.__dataclass_fields__[name].type == "float" \
            else int(values[name] or 0)
    for name in ("function", "exception", "cursor_id"):
        values[name] = values.get(name) or None
    return Run(**{**values, "id": run_id})


def runs(connection: Redis, run_ids: Iterable[str] | None = None, limit: int = 20) -> list[Run]:
    """The runs named (default: the ``limit`` most recent ones, newest first) that still exist;
    names that are no run id (as :func:`start` makes them) are left out.

    Usage: ``[run.summary() for run in runs(redis)]``
    """
    chosen = [run_id for run_id in run_ids if _RUN_ID.fullmatch(run_id)] if run_ids is not None else \
        [as_text(run_id) for run_id in connection.zrevrange(RUNS_KEY, 0, limit - 1)]
    with connection.pipeline(transaction=False) as pipe:
        for run_id in chosen:
            pipe.hgetall(run_key(run_id))
        found = [_restore(run_id, stored) for run_id, stored in zip(chosen, pipe.execute())]
    return [run for run in found if run is not None]


def orphaned(connection: Redis, queue: str | None = None) -> list[Run]:
    """Running runs whose owner stopped heartbeating (it died): the ones to resume, oldest first.

    Usage: ``for run in orphaned(redis): ...``
    """
    candidates = [run for run in runs(connection, limit=RUNS_KEPT)[::-1]
                  if run.running and (queue is None or run.queue == queue)]
    with connection.pipeline(transaction=False) as pipe:
        for run in candidates:
            pipe.exists(owner_key(run.id))
        owned = pipe.execute()
    return [run for run, alive in zip(candidates, owned) if not alive]


def claim(connection: Redis, run_id: str, owner: str) -> bool:
    """Become the driver of run ``run_id``: True unless another process' heartbeat holds it.

    Usage: ``if claim(redis, run.id, owner): drive(redis, run.id, owner)``
    """
    return bool(connection.set(owner_key(run_id), owner, nx=True, ex=HEARTBEAT_TTL))


def drive(connection: Redis, run_id: str, owner: str, *, batch_size: int = BATCH_SIZE, throttle: float = 0.0,
          on_batch: Callable[[Run], None] | None = None) -> Run | None:
    """Drive a claimed run to its end, batch after batch, heartbeating; returns it as it ended
    (None when there is no such run). Stops early (status still ``running``) when the run was
    taken over or deleted meanwhile.
    ``throttle``: seconds to pause between batches, to spare a busy Redis. ``on_batch`` is called
    with the run after each batch (a progress bar).

    Usage: ``run = drive(redis, run.id, owner, on_batch=lambda run: print(run.done))``
    """
    run = load(connection, run_id)
    if run is not None and run.running and connection.get(owner_key(run_id)) == owner.encode():
        _settle(connection, run)
    while run is not None and run.running:
        if connection.get(owner_key(run_id)) != owner.encode():
            break  # taken over (our heartbeat lapsed) or the run was dropped
        connection.expire(owner_key(run_id), HEARTBEAT_TTL)
        more = _batch(connection, run, batch_size)
        if on_batch is not None:
            on_batch(run)
        if not more:
            _finish(connection, run, owner, DONE)
        elif throttle:
            time.sleep(throttle)
    return run


def follow(connection: Redis, run_id: str, owner: str, *, batch_size: int = BATCH_SIZE, throttle: float = 0.0,
           on_batch: Callable[[Run], None] | None = None) -> Run | None:
    """See run ``run_id`` to its end: drive it whenever nobody does (it is ``owner``'s, or its
    driver's heartbeat lapsed), else watch it every :data:`FOLLOW_POLL` seconds, calling
    ``on_batch`` with its progress. Returns the run as it ended, None when it was deleted.

    Usage: ``run, _ = start(redis, "emails"); follow(redis, run.id, new_owner(), on_batch=print)``
    """
    while True:
        if connection.get(owner_key(run_id)) == owner.encode() or claim(connection, run_id, owner):
            run = drive(connection, run_id, owner, batch_size=batch_size, throttle=throttle, on_batch=on_batch)
        else:
            run = load(connection, run_id)
            if run is not None and run.running:
                if on_batch is not None:
                    on_batch(run)
                time.sleep(FOLLOW_POLL)
                continue
        if run is None or not run.running:
            return run


def fail(connection: Redis, run: Run, owner: str, error: str) -> None:
    """End ``run`` as failed with ``error`` (an unexpected error of its driver), releasing it.

    Usage: ``fail(redis, run, owner, "ValueError: ...")``
    """
    run.error = error
    _finish(connection, run, owner, FAILED)


def _finish(connection: Redis, run: Run, owner: str, status: str) -> None:
    now = _redis_now(connection)
    run.status, run.finished_at, run.updated_at = status, now, now
    with connection.pipeline() as pipe:  # the queue is free for the next run in the same transaction
        pipe.hset(run.key, mapping={"status": status, "finished_at": now, "updated_at": now, "error": run.error})
        pipe.expire(run.key, FINISHED_TTL)
        pipe.delete(active_key(run.queue))
        pipe.execute()
    if connection.get(owner_key(run.id)) == owner.encode():
        connection.delete(owner_key(run.id))


def _redis_now(connection: Redis) -> float:
    seconds, micros = connection.time()
    return seconds + micros / 1e6


def _batch(connection: Redis, run: Run, batch_size: int) -> bool:
    """Examine the next ``batch_size`` ids of the registry, requeue the matching ones, record the
    counts and the cursor; False once the registry is examined up to the run's ``until`` bound."""
    key = FailedJobRegistry(run.queue, connection=connection).key
    with connection.pipeline(transaction=False) as pipe:
        pipe.zrank(key, run.cursor_id or "")
        pipe.zcount(key, "-inf", f"({run.cursor_score}")
        pipe.zcount(key, "-inf", run.until)  # the registry is in score order: the ids up to this index are in bound
        rank, before, bound = pipe.execute()
    first = rank + 1 if rank is not None else before if run.cursor_id else 0
    job_ids, stored = _read(connection, key, first, min(batch_size, bound - first), _fields_for(run.filters))
    groups, matched = _select(connection, run.filters, job_ids, stored)
    chosen = [job_id for group in groups.values() for job_id in group]
    if chosen:  # noted first: a driver killed inside the requeue leaves what it was doing (see _settle)
        with connection.pipeline() as pipe:
            pipe.delete(pending_key(run.id))
            pipe.rpush(pending_key(run.id), *chosen)
            pipe.execute()
    done = _requeue(connection, run.queue, groups)
    left = connection.zmscore(key, job_ids) if job_ids else []
    kept = [(job_id, score) for job_id, score in zip(job_ids, left) if score is not None]
    if kept:
        run.cursor_id, run.cursor_score = kept[-1]
    _record(connection, run, examined=len(job_ids), done=done, skipped=matched - done)
    return bool(job_ids) and first + len(job_ids) < bound


def _requeue(connection: Redis, queue: str, groups: dict[type, list[str]]) -> int:
    """Requeue each group of ids through ``rqplus.Queue.requeue_failed_many``, each job saved back
    with the serializer of its group; returns how many were requeued."""
    return sum(Queue(queue, connection=connection, serializer=serializer).requeue_failed_many(job_ids)
               for serializer, job_ids in groups.items() if job_ids)


def _record(connection: Redis, run: Run, examined: int, done: int, skipped: int) -> None:
    """Add a batch's counts and its cursor to the run, and drop its pending note, in one transaction."""
    run.examined += examined
    run.done += done
    run.skipped += skipped
    run.updated_at = _redis_now(connection)
    with connection.pipeline() as pipe:
        pipe.hset(run.key, mapping={"examined": run.examined, "done": run.done, "skipped": run.skipped,
                                    "cursor_id": run.cursor_id or "", "cursor_score": run.cursor_score,
                                    "updated_at": run.updated_at})
        pipe.delete(pending_key(run.id))
        pipe.execute()


def _settle(connection: Redis, run: Run) -> None:
    """Count a killed driver's last batch, from its pending note: the noted jobs no longer in the
    registry were requeued before the driver could record them (``requeue_failed_many`` takes a
    job out of the registry and queues it in one script). The others are still in the registry,
    examined again."""
    noted = [as_text(job_id) for job_id in connection.lrange(pending_key(run.id), 0, -1)]
    if not noted:
        return
    key = FailedJobRegistry(run.queue, connection=connection).key
    gone = [job_id for job_id, score in zip(noted, connection.zmscore(key, noted)) if score is None]
    _record(connection, run, examined=len(gone), done=len(gone), skipped=0)


def _fields_for(filters: Filters) -> list[str]:
    """The job hash fields a batch reads: meta (its format, and whether a requeue would change
    it), plus what the filters look at."""
    return ["meta"] + (["data"] if filters.function else []) + (["exc_info"] if filters.exception else [])


def _read(connection: Redis, key: str, first: int, count: int,
          names: list[str]) -> tuple[list[str], list[dict[str, bytes | None]]]:
    """``count`` ids of the registry ``key`` from index ``first``, and the job hash fields
    ``names`` of each (None for a field or job that is gone).

    One round trip: ``SORT_RO ... BY nosort LIMIT ... GET # GET rq:job:*->meta ...`` reads the ids
    in the sorted set's order with their fields. A Redis user limited to some key patterns may
    not SORT with GET (Redis refuses it), nor has Redis before 7.0 SORT_RO: then ZRANGE and one
    pipelined HMGET per job, about twice the client time.
    """
    if count <= 0:
        return [], []
    patterns = [f"{Queue.job_class.key_for('*')}->{name}" for name in names]
    pool = connection.connection_pool
    try:
        if pool in _SORT_REFUSED:
            raise ResponseError("SORT_RO ... GET was refused before")
        flat = connection.sort_ro(key, start=first, num=count, by="nosort", get=["#", *patterns])
        rows = [flat[index:index + len(names) + 1] for index in range(0, len(flat), len(names) + 1)]
    except ResponseError:  # SORT's GET refused (ACL key patterns), or no SORT_RO (Redis < 7)
        _SORT_REFUSED.add(pool)  # asked once per client: each refusal is an ACL LOG entry
        read = connection.zrange(key, first, first + count - 1)
        with connection.pipeline(transaction=False) as pipe:
            for job_id in read:
                pipe.hmget(Queue.job_class.key_for(as_text(job_id)), names)
            rows = [[job_id, *values] for job_id, values in zip(read, pipe.execute())]
    return [as_text(row[0]) for row in rows], [dict(zip(names, row[1:])) for row in rows]


def _select(connection: Redis, filters: Filters, job_ids: list[str],
            stored: list[dict[str, bytes | None]]) -> tuple[dict[type, list[str]], int]:
    """The ids among ``job_ids`` (their fields ``stored``, from :func:`_read`) to requeue, by the
    serializer that saves each back in its own format, and how many matched the filters (the ones
    refused for their meta included). The exception filter reads each job's latest result too:
    one pipelined round trip."""
    if filters.exception:
        with connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.xrevrange(Result.get_key(job_id), "+", "-", count=1)
            latest = pipe.execute()
    groups: dict[type, list[str]] = {JSONSerializer: [], RestrictedPickleSerializer: []}
    verdicts: dict[bytes, type | None] = {}  # jobs of a batch mostly share their meta's bytes
    matched = 0
    for index, (job_id, fields_of) in enumerate(zip(job_ids, stored)):
        if not any(fields_of.values()):
            continue  # the job hash is gone: nothing to requeue, nothing matched
        # only what a filter given looks at is read; the others match anything
        function = function_name(_decompressed(fields_of["data"])) if filters.function else ""
        exception = exception_type(result_exc_string(latest[index]) or stored_exc_info(fields_of["exc_info"])) \
            if filters.exception else ""
        if not filters.matches(filters.queue or "", function, exception):
            continue
        matched += 1
        meta = fields_of["meta"]
        if not meta:
            serializer = _format_of(connection, job_id, meta)
        else:
            if meta not in verdicts:
                verdicts[meta] = _format_of(connection, job_id, meta)
            serializer = verdicts[meta]
        if serializer is not None:
            groups[serializer].append(job_id)
    return groups, matched


def _format_of(connection: Redis, job_id: str, meta: bytes | None) -> type | None:
    """The serializer that saves the job back as it was written (its meta tells: JSON or pickle),
    or None when requeueing would change its meta."""
    if not meta:  # no meta to tell: the job data does
        data = _decompressed(connection.hget(Queue.job_class.key_for(job_id), "data"))
        return serializer_for(data) if data else RestrictedPickleSerializer
    serializer = serializer_for(meta)
    try:
        loaded = serializer.loads(meta)
    except Exception:
        return None
    return None if unsafe_meta(loaded) else serializer


def _decompressed(data: bytes | None) -> bytes | None:
    return inflated(data) if data else None  # as RQ reads it (stored uncompressed: as is), bounded
