"""A supervised pool of worker processes: what ``rqplus worker --processes P`` and ``rqplus up`` run.

Each child is the command a user would type, ``python -m rq.cli worker -w rqplus.Worker --queue-class
rqplus.Queue --with-scheduler QUEUES`` (the worker class is a dotted path: the pool never imports it),
in a process group of its own. A child that dies is replaced; one that keeps dying right after its
start stops the pool with :class:`rqplus.exceptions.PoolError` instead of a restart loop. A dead
child's running job is rescued by the other rqplus workers (:mod:`rqplus.recovery`); the pool only
kills its orphaned work-horse, so the job never runs twice at once.

Stopping is RQ's two steps, then a kill: SIGTERM to each child (warm: running jobs finish), after
``stop_timeout`` a second SIGTERM (cold: :meth:`rqplus.Worker.request_force_stop` puts the running
job back in its queue), after ``COLD_GRACE`` SIGKILL of what is left, work-horses included.

Usage::

    from rqplus.pool import WorkerPool
    WorkerPool(["emails"], processes=4).run()        # what `rqplus worker --processes 4 emails` runs

    with WorkerPool(["emails"], processes=2, url=url) as pool:   # started; drained on leaving
        while True:
            pool.check()                                # replaces dead children
            time.sleep(0.2)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rqplus.connections import redis_url
from rqplus.defaults import POOL_PROCESSES, WORKER_STOP_TIMEOUT
from rqplus.exceptions import PoolError

log = logging.getLogger(__name__)

#: The worker class of each kind of pool child (dotted paths: the pool never imports them).
WORKER_CLASS = "rqplus.Worker"
THREAD_WORKER_CLASS = "rqplus.ThreadWorker"
ASYNC_WORKER_CLASS = "rqplus.AsyncWorker"
#: Environment variable giving each child the number of jobs it runs at once (threads or tasks).
CONCURRENCY_ENV = "RQPLUS_CONCURRENCY"
#: Seconds a child has after the cold-shutdown signal before it is killed.
COLD_GRACE = 3.0
#: RQ ignores a second stop signal that comes less than 1 s after the first (``request_force_stop``):
#: the cold signal waits until this long after the warm one.
SIGNAL_GAP = 1.5
#: A child that exits sooner than this after its start (seconds) exited *quickly*.
QUICK_EXIT = 10.0
#: Quick exits in a row of one slot's children after which the pool gives up (``PoolError``).
MAX_QUICK_EXITS = 5
#: Delay before replacing a quick exit, doubled for each one in a row (seconds), and its cap.
BACKOFF = 0.25
BACKOFF_CAP = 8.0
#: How often the pool looks at its children (seconds).
POLL_INTERVAL = 0.2
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def worker_class_for(threads: int | None = None, tasks: int | None = None,
                     worker_class: str | None = None) -> tuple[str, int | None]:
    """The worker class (dotted path) and concurrency of ``--threads N`` / ``--async N``.

    ``worker_class`` wins over the class the mode implies; the concurrency still goes to the child.
    Raises ``ValueError`` when both modes are given.

    Usage: ``worker_class_for(threads=8)  # -> ('rqplus.ThreadWorker', 8)``
    """
    if threads is not None and tasks is not None:
        raise ValueError("--threads and --async are exclusive: a worker runs jobs in threads or in an event loop")
    implied = THREAD_WORKER_CLASS if threads is not None else ASYNC_WORKER_CLASS if tasks is not None else WORKER_CLASS
    return worker_class or implied, threads if threads is not None else tasks


def worker_command(queues: Sequence[str], worker_class: str = WORKER_CLASS, burst: bool = False,
                   scheduler: bool = True) -> list[str]:
    """The ``rq worker`` command line of one rqplus worker, as a user would type it.

    The Redis URL is not in it: it goes in ``$RQ_REDIS_URL``, where ``ps`` does not show its password.

    Usage: ``subprocess.Popen(worker_command(["emails"]), env={**os.environ, "RQ_REDIS_URL": url})``
    """
    return [sys.executable, "-m", "rq.cli", "worker", "-w", worker_class, "--queue-class", "rqplus.Queue",
            *(["--with-scheduler"] if scheduler else []), *(["--burst"] if burst else []), *queues]


def descendants(pid: int) -> list[int]:
    """Every descendant pid of ``pid``, children first (Linux ``/proc``; empty where there is none).

    Usage: ``descendants(worker.pid)  # -> [work-horse pid, ...]``
    """
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in map(int, children.read_text().split()):
                found += [child, *descendants(child)]
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid``'s process group and every descendant with theirs.

    RQ's work-horse leaves its worker's group (``os.setpgrp`` in ``fork_work_horse``): a group
    kill alone would leave the job it runs going on.

    Usage: ``kill_tree(worker.pid)``
    """
    found = descendants(pid)  # before the kill: orphans are re-parented and could not be found after
    for target in (pid, *found):  # each group leader (``pid`` itself, a work-horse) with its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(target, sig)
    for target in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


def session_members(sid: int) -> list[int]:
    """Every live process (zombies excluded) of the session ``sid`` (Linux ``/proc``).

    Each pool child starts a session; its work-horse leaves the child's process group but not its
    session, and stays in it when orphaned, so this finds what a dead child left behind. The session
    id stays taken while a member lives: a reused pid cannot bring a stranger in.

    Usage: ``session_members(child.pid)  # -> [child pid, work-horse pid, ...]``
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()  # the name before ")" may hold spaces
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields 6 (session) and 3 (state) of proc(5)
            found.append(int(entry.name))
    return found


def kill_session(sid: int, sig: int = signal.SIGKILL) -> None:
    """Signal every process of the session ``sid`` (see :func:`session_members`).

    Usage: ``kill_session(child.pid)  # after the child died: its orphaned work-horse``
    """
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def describe_exit(status: int) -> str:
    """``Popen.returncode`` in words: ``'exited with status 1'``, ``'was killed by SIGKILL'``."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def drain(processes: Sequence[subprocess.Popen], timeout: float = WORKER_STOP_TIMEOUT, grace: float = COLD_GRACE,
          hurry: Callable[[], bool] = lambda: False) -> list[subprocess.Popen]:
    """Stop worker processes as RQ means them to be stopped; returns those that had to be killed.

    SIGTERM to each (RQ's warm shutdown: the running job finishes); after ``timeout`` s, or as soon
    as ``hurry()`` is true, SIGTERM again (cold shutdown: an rqplus worker puts its running job back
    in its queue); after ``grace`` s more, SIGKILL of each one left with every descendant
    (:func:`kill_tree`). Only the worker is signalled, never its work-horse, which would die of it.

    Usage: ``drain(pool.processes, timeout=10)``
    """
    live = [process for process in processes if process.poll() is None]
    for process in live:
        process.terminate()
    warm_at = time.monotonic()
    _wait(live, warm_at + timeout, hurry)
    cold = [process for process in live if process.poll() is None]
    if cold:
        _wait(cold, warm_at + SIGNAL_GAP)  # RQ would ignore the second signal
        cold = [process for process in cold if process.poll() is None]
    if cold:
        log.warning("cold shutdown of %d worker(s) (pids %s): running jobs go back to their queues",
                    len(cold), ", ".join(str(process.pid) for process in cold))
        for process in cold:
            process.terminate()
        _wait(cold, time.monotonic() + grace)
    killed = [process for process in processes if process.poll() is None]
    for process in processes:
        kill_tree(process.pid)  # the live ones with their descendants
        process.wait()
        kill_session(process.pid)  # what an exited one left behind, if it was a session leader
    if killed:
        log.error("killed worker(s) %s: still running %g s after the cold shutdown; their jobs are left to "
                  "the rescue by live workers", ", ".join(str(process.pid) for process in killed), grace)
    return killed


def _wait(processes: Sequence[subprocess.Popen], deadline: float, hurry: Callable[[], bool] = lambda: False) -> None:
    """Until every process in ``processes`` exited, ``deadline`` (monotonic) passed or ``hurry()``."""
    while any(process.poll() is None for process in processes) and time.monotonic() < deadline and not hurry():
        time.sleep(min(POLL_INTERVAL / 2, max(0.0, deadline - time.monotonic())))


@dataclass
class Child:
    """One running child of a pool: its slot (1..P), process and start (monotonic)."""

    slot: int
    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)


class StartStop:
    """A context manager of ``start()`` and ``stop()``; ``stop()`` also when ``start()`` fails half way.

    Usage: ``class Stack(StartStop): def start(self): ...; def stop(self): ...``
    """

    def __enter__(self) -> Any:
        try:
            return self.start()  # type: ignore[attr-defined]
        except BaseException:
            self.stop()  # type: ignore[attr-defined]
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()  # type: ignore[attr-defined]


class WorkerPool(StartStop):
    """``processes`` supervised worker processes on ``queues``; see the module's docstring.

    ``worker_class``: dotted path of the workers' class (default ``rqplus.Worker``); ``concurrency``:
    given to each child as ``$RQPLUS_CONCURRENCY`` (thread and async workers). ``url``: the Redis
    (default ``$REDIS_URL``, else redis://127.0.0.1:6379/0), passed in ``$RQ_REDIS_URL``.
    ``burst``: children run in burst mode, and one that exits 0 is not replaced; the pool is done
    when all have. ``scheduler``: each child runs ``--with-scheduler`` (RQ's per-queue lock lets
    one of them schedule; another takes over when it dies). ``env``: added to the children's
    environment; ``output``: file the children write to (default: this process' stdout and stderr).

    Usage: ``WorkerPool(["emails", "payments"], processes=4, burst=True).run()  # -> exit status``
    """

    def __init__(
        self,
        queues: Sequence[str],
        processes: int = POOL_PROCESSES,
        worker_class: str = WORKER_CLASS,
        concurrency: int | None = None,
        url: str | None = None,
        burst: bool = False,
        stop_timeout: float = WORKER_STOP_TIMEOUT,
        scheduler: bool = True,
        env: dict[str, str] | None = None,
        output: str | os.PathLike | None = None,
        max_quick_exits: int = MAX_QUICK_EXITS,
        backoff: float = BACKOFF,
    ):
        if processes < 0 or (concurrency is not None and concurrency < 1) or max_quick_exits < 1:
            raise ValueError("processes must be >= 0, concurrency >= 1 and max_quick_exits >= 1")
        self.queues = list(queues)
        self.size = processes
        self.worker_class = worker_class
        self.concurrency = concurrency
        self.url = redis_url(url)
        self.burst = burst
        self.stop_timeout = stop_timeout
        self.scheduler = scheduler
        self.env = dict(env or {})
        self.output = Path(output) if output is not None else None
        self.max_quick_exits = max_quick_exits
        self.backoff = backoff
        #: The running child of each slot (1..P), None while it waits to be replaced or has finished.
        self.children: dict[int, Child | None] = {}
        self._quick_exits: dict[int, int] = {}  # slot -> quick exits in a row
        self._restart_at: dict[int, float] = {}  # slot -> when its replacement starts (monotonic)
        self._finished: set[int] = set()  # slots whose burst child exited 0
        self._stop_requests = 0  # SIGTERM/SIGINT received by run()

    @property
    def command(self) -> list[str]:
        """The command line each child runs."""
        return worker_command(self.queues, self.worker_class, self.burst, self.scheduler)

    @property
    def processes(self) -> list[subprocess.Popen]:
        """The children running now (one per slot, except while a slot waits for its replacement)."""
        return [child.process for child in self.children.values() if child is not None]

    def start(self) -> WorkerPool:
        """Start one child per slot. Call :meth:`stop` in any case."""
        for slot in range(1, self.size + 1):
            self._spawn(slot)
        return self

    def _spawn(self, slot: int) -> None:
        env = {**os.environ, **self.env, "RQ_REDIS_URL": self.url}
        if self.concurrency is not None:
            env[CONCURRENCY_ENV] = str(self.concurrency)
        if self.output:
            self.output.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.output, "a") if self.output else None  # noqa: SIM115 -- the child keeps its own copy
        try:
            process = subprocess.Popen(self.command, env=env, start_new_session=True, stdout=out,
                                       stderr=subprocess.STDOUT if out else None)
        finally:
            if out:
                out.close()
        self.children[slot] = Child(slot, process)
        self._restart_at.pop(slot, None)
        log.info("worker %d/%d started, pid %d", slot, self.size, process.pid)

    def check(self) -> bool:
        """Look at every child once: replace the dead (after a backoff if they die right after
        starting), start replacements that are due. Returns False once a burst pool is done.

        Raises ``PoolError`` when a slot's children exited quickly ``max_quick_exits`` times in a row.
        """
        now = time.monotonic()
        for slot in range(1, self.size + 1):
            child = self.children.get(slot)
            if child is None:
                if slot in self._restart_at and now >= self._restart_at[slot]:
                    self._spawn(slot)
                continue
            status = child.process.poll()
            if status is None:
                continue
            kill_session(child.process.pid)  # its orphaned work-horse: the job is rescued, not run twice at once
            self.children[slot] = None
            lived = now - child.started
            if self.burst and status == 0:
                self._finished.add(slot)
                log.info("worker %d (pid %d) finished its burst", slot, child.process.pid)
                continue
            quick = self._quick_exits[slot] = self._quick_exits.get(slot, 0) + 1 if lived < QUICK_EXIT else 0
            what = f"worker {slot} (pid {child.process.pid}) {describe_exit(status)} after {lived:.1f} s"
            if quick >= self.max_quick_exits:
                raise PoolError(f"{what}: its {quick} last workers all exited within {QUICK_EXIT:g} s of their "
                                "start, not restarting it (see the workers' output for why)")
            delay = min(self.backoff * 2 ** (quick - 1), BACKOFF_CAP) if quick else 0.0
            log.warning("%s: replacing it%s", what, f" in {delay:g} s ({quick} quick exits in a row)" if quick else "")
            self._restart_at[slot] = now + delay
            if not delay:
                self._spawn(slot)
        return not (self.burst and len(self._finished) == self.size)

    def stop(self, timeout: float | None = None) -> bool:
        """Drain every child (:func:`drain`; ``timeout`` defaults to ``stop_timeout``); a second stop
        signal to :meth:`run` meanwhile skips to the cold shutdown. Returns True when every child
        stopped on its signals, False when one had to be killed."""
        self._restart_at.clear()
        children = [child for child in self.children.values() if child is not None]
        if not children:
            return True
        if any(child.process.poll() is None for child in children):
            log.info("stopping %d worker(s): each finishes its current job (cold shutdown after %g s%s)",
                     len(children), self.stop_timeout if timeout is None else timeout,
                     ", or at a second Ctrl-C" if self._stop_requests else "")
        killed = drain([child.process for child in children], self.stop_timeout if timeout is None else timeout,
                       hurry=lambda: self._stop_requests > 1)
        self.children = dict.fromkeys(self.children)
        return not killed

    def run(self) -> int:
        """Start, supervise until SIGTERM or SIGINT (or, in burst mode, until every child is done),
        then drain; call from the main thread. Returns the exit status: 0 after a clean run and
        drain, 1 when the pool gave up on a child (logged) or had to kill one."""
        status = 0
        with self._stop_signals():
            try:
                log.info("%d worker(s) on %s: python %s", self.size, ", ".join(self.queues),
                         " ".join(self.command[1:]))
                self.start()
                while not self._stop_requests and self.check():
                    time.sleep(POLL_INTERVAL)
            except PoolError as error:
                log.error("error: %s", error)
                status = 1
            finally:
                if not self.stop():
                    status = 1
        log.info("stopped")
        return status

    def _request_stop(self, signum: int, frame: object) -> None:
        self._stop_requests += 1
        if self._stop_requests == 2:
            log.warning("second stop signal: cold shutdown now, running jobs go back to their queues")

    @contextlib.contextmanager
    def _stop_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT request the stop; a second one hurries it to the cold shutdown."""
        previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
        for sig in _STOP_SIGNALS:
            signal.signal(sig, self._request_stop)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def hurry(self) -> None:
        """Make a stop in progress (or the next) skip to the cold shutdown, as a second Ctrl-C does."""
        self._stop_requests = max(self._stop_requests, 2)
