"""The local stack of ``rqplus up``: a Redis and rqplus worker processes, stopped cleanly together.

The Redis is, in this order: the one named by ``url`` or ``$REDIS_URL`` (which must answer), one
already answering at the local URL, or an embedded ``redis-server`` with AOF on, data in
``./.rqplus/redis``, on the local URL's port if free, else on a free port. The local URL is
``redis://127.0.0.1:6379/0`` unless ``$RQPLUS_LOCAL_URL`` (or ``local_url``) says otherwise, e.g.
to keep a machine's own Redis out of tests.

Usage::

    from rqplus.stack import up
    up(["emails"], workers=2)                     # what `rqplus up emails` runs; returns on Ctrl-C

    with Stack(["emails"], workers=2) as stack:   # the same stack, driven from Python (workers: a WorkerPool)
        Queue("emails", connection=stack.connection()).enqueue(send_email, priority=0)
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import AuthenticationError, ConnectionError, RedisError, ResponseError

from rqplus.connections import REDIS_URL_ENV, connect, explain, is_reachable, redact, redis_url, url_is_configured
from rqplus.defaults import DASHBOARD_HOST, DEFAULT_DATA_DIR, DEFAULT_QUEUES, DEFAULT_REDIS_URL, WORKER_STOP_TIMEOUT
from rqplus.durability import check
from rqplus.embedded import DURABLE_CONFIG, RedisServer, RedisServerError
from rqplus.exceptions import LibraryError, PoolError
from rqplus.functions import Library, install, library_named, rqplus_library
from rqplus.pool import WORKER_CLASS, StartStop, WorkerPool
from rqplus.queue import Queue

if TYPE_CHECKING:  # Flask and rq-dashboard only load when the dashboard runs
    from rqplus.dashboard import Server

#: Environment variable naming where ``rqplus up`` looks for (or starts) a local Redis.
LOCAL_URL_ENV = "RQPLUS_LOCAL_URL"
#: The user ``rqplus up`` makes up for the dashboard when none is configured.
DASHBOARD_USER = "admin"
#: How often ``up`` checks its processes and redraws the demo table, in seconds.
REFRESH_SECONDS = 0.5
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StackError(RuntimeError):
    """``rqplus up`` cannot go on; the message is one line for the user, ``exit_code`` its exit status."""

    exit_code = 1


class RedisUnavailable(StackError):
    """The Redis the user chose (``--url`` or ``$REDIS_URL``) cannot be used."""

    exit_code = 2


def local_redis_url(url: str | None = None) -> str:
    """Where to look for a local Redis: ``url``, else ``$RQPLUS_LOCAL_URL``, else redis://127.0.0.1:6379/0.

    Usage: ``local_redis_url()  # -> 'redis://127.0.0.1:6379/0'``
    """
    return redis_url(url or os.environ.get(LOCAL_URL_ENV) or DEFAULT_REDIS_URL)


def why_not_redis(url: str) -> str | None:
    """None if a Redis answers at ``url``, else why not, in a few words (never the password).

    Usage: ``why_not_redis("redis://127.0.0.1:6379/0")  # -> None, or 'nothing answers'``
    """
    try:
        return None if is_reachable(url) else "nothing answers"
    except AuthenticationError as error:
        return f"it refused the credentials ({error})"
    except ConnectionError as error:  # its TLS certificate did not verify
        return f"its certificate was refused ({explain(error)})"
    except RedisError as error:  # e.g. a server that does not speak Redis
        return f"it does not answer as a Redis ({error})"
    except ValueError as error:  # e.g. a port that is not a number
        return f"not a valid URL ({error})"


def port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:``port``.

    Usage: ``RedisServer(port=6379 if port_is_free(6379) else None)``
    """
    with socket.socket() as sock:
        # as redis-server binds: a port left in TIME_WAIT by a stopped server is free to it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Stack(StartStop):
    """A Redis (see the module's docstring for which) and ``workers`` rqplus worker processes on ``queues``.

    The workers are a :class:`rqplus.pool.WorkerPool` (each in its own session, replaced if it
    dies), with the current directory as their working directory, their output in ``worker_log`` if
    given (else this process' terminal); ``worker_class`` and ``concurrency`` as the pool takes them.
    Progress lines go to ``out`` (default: stdout). As a context manager, leaving it stops everything.

    Usage: ``with Stack(["emails"], url="redis://127.0.0.1:6380/0") as stack: ...``
    """

    def __init__(
        self,
        queues: Sequence[str] = DEFAULT_QUEUES,
        workers: int = 2,
        url: str | None = None,
        local_url: str | None = None,
        data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
        worker_log: str | os.PathLike | None = None,
        out: TextIO | None = None,
        stop_timeout: float = WORKER_STOP_TIMEOUT,
        dashboard_port: int | None = None,
        env: dict[str, str] | None = None,
        worker_class: str = WORKER_CLASS,
        concurrency: int | None = None,
    ):
        self.queues = list(queues)
        #: Environment the workers get on top of this process' own.
        self.env = env or {}
        self.worker_count = workers
        self.requested_url = url
        self.local_url = local_url
        self.data_dir = Path(data_dir)
        self.worker_log = Path(worker_log) if worker_log is not None else None
        self.out = out or sys.stdout
        self.stop_timeout = stop_timeout
        #: The URL of the Redis in use, once started.
        self.url: str | None = None
        #: The embedded Redis, if one was started.
        self.server: RedisServer | None = None
        self.worker_class = worker_class
        self.concurrency = concurrency
        #: The worker processes, once started.
        self.pool: WorkerPool | None = None
        #: Port for the dashboard (0: any free one), None for no dashboard.
        self.dashboard_port = dashboard_port
        #: The dashboard's waitress server (one loopback socket), once started.
        self.dashboard: Server | None = None
        #: The Redis function libraries loaded at start: rqplus's (``up(demo=True)`` adds the demo's).
        self.libraries: list[Library] = [rqplus_library()]

    def say(self, line: str) -> None:
        """Print one progress line for the user."""
        print(line, file=self.out, flush=True)

    def start(self) -> Stack:
        """Find or start Redis, then start the workers. Raises ``StackError`` (``RedisUnavailable``)
        and ``RedisServerError``; call ``stop`` in any case."""
        self.url = self._choose_redis()
        self._load_functions()
        self._start_workers()
        if self.dashboard_port is not None:
            self._start_dashboard()
        return self

    def _choose_redis(self) -> str:
        configured = bool(self.requested_url or url_is_configured())
        try:
            url = redis_url(self.requested_url) if configured else local_redis_url(self.local_url)
        except ValueError as error:  # not a Redis URL
            raise RedisUnavailable(str(error)) from error
        source = ("--url" if self.requested_url else f"${REDIS_URL_ENV}") if configured else ""
        problem = why_not_redis(url)
        if problem is None:
            self.say(f"Redis: {redact(url)} ({f'from {source}' if configured else 'already running'})")
            self._warn_if_not_durable(url)
            return url
        if configured:
            raise RedisUnavailable(f"cannot use Redis at {redact(url)} (from {source}): {problem}")
        return self._start_embedded(url, problem)

    def _start_embedded(self, local_url: str, problem: str) -> str:
        port = urlsplit(local_url).port or 6379
        self.server = RedisServer(config=DURABLE_CONFIG, port=port if port_is_free(port) else None,
                                  data_dir=self.data_dir / "redis")
        self.server.start()
        moved = "" if self.server.port == port else f" (port {port} is taken: {problem})"
        self.say(f"Redis: embedded redis-server pid {self.server.process.pid} at {self.server.url}{moved}, "
                 f"AOF on, data in {self.server.data_dir}")
        return self.server.url

    def _warn_if_not_durable(self, url: str) -> None:
        with connect(url) as client:
            try:
                report = check(client)
            except ResponseError as error:  # INFO forbidden by an ACL
                self.say(f"warning: could not check that this Redis is durable: {error}")
                return
        if not report.ok:
            self.say("warning: this Redis is not durable: " + "; ".join(report.problems))

    def _load_functions(self) -> None:
        """Load the function libraries (FUNCTION LOAD), which the Redis' own user may always do on the
        embedded Redis; on another, its admin may have to (``rqplus check --install``): a warning."""
        with connect(self.url) as client:
            try:
                lines = install(client, self.libraries)
            except (LibraryError, ResponseError) as error:
                self.say(f"warning: could not load rqplus's Redis functions: {error}")
                return
        self.say("Functions: " + "; ".join(lines))

    @property
    def workers(self) -> list[subprocess.Popen]:
        """The worker processes running now."""
        return self.pool.processes if self.pool else []

    def _start_workers(self) -> None:
        if not self.worker_count:
            return
        self.pool = WorkerPool(self.queues, self.worker_count, worker_class=self.worker_class,
                               concurrency=self.concurrency, url=self.url, stop_timeout=self.stop_timeout,
                               env=self.env, output=self.worker_log).start()
        pids = ", ".join(str(worker.pid) for worker in self.workers)
        logs = f"; their logs in {self.worker_log}" if self.worker_log else ""
        kind = "" if self.worker_class == WORKER_CLASS and self.concurrency is None else \
            f" ({self.worker_class}{f', {self.concurrency} jobs at once each' if self.concurrency else ''})"
        self.say(f"Workers: {len(self.workers)} rqplus workers{kind} (pids {pids}) with scheduler on queues "
                 f"{', '.join(self.queues)}{logs}")

    def _start_dashboard(self) -> None:
        """Serve the dashboard on loopback from a thread of this process: closed, as always, so without
        configured credentials a password is made up for this run and shown once."""
        from rqplus import dashboard  # Flask and rq-dashboard only load when the dashboard runs

        credentials = dashboard.Credentials.from_env()
        shown = ""
        if credentials is None:
            credentials = dashboard.Credentials(DASHBOARD_USER, secrets.token_urlsafe(12))
            shown = (f" - user {credentials.username}, password {credentials.password} (this run only; set "
                     f"{dashboard.security.USERNAME_ENV} and {dashboard.security.PASSWORD_ENV} to choose)")
        app = dashboard.create_app(self.url, credentials=credentials)
        moved = ""
        try:
            self.dashboard = dashboard.Server(app, DASHBOARD_HOST, self.dashboard_port)
        except OSError:  # the port is taken: any free one will do
            self.dashboard = dashboard.Server(app, DASHBOARD_HOST, 0)
            moved = f" (port {self.dashboard_port} is taken)"
        self.dashboard.start()
        self.say(f"Dashboard: {self.dashboard.urls[0]}{moved}{shown}")

    def connection(self) -> Redis:
        """A new client of the Redis in use."""
        return connect(self.url)

    def check(self) -> None:
        """Replace a worker that exited; raise ``StackError`` if workers keep exiting right after their
        start (see :meth:`rqplus.pool.WorkerPool.check`) or the embedded Redis has exited."""
        if self.pool:
            try:
                self.pool.check()
            except PoolError as error:
                logs = f"; see {self.worker_log}" if self.worker_log else ""
                raise StackError(f"{error}{logs}") from error
        if self.server and self.server.process and self.server.process.poll() is not None:
            raise StackError(f"the embedded redis-server exited; see {self.server.log_path}")

    def stop(self) -> None:
        """Stop the dashboard and the workers (each finishes its current job), then the embedded Redis
        (AOF flushed, data kept)."""
        if self.dashboard:
            self.dashboard.stop()
            self.dashboard = None
        if self.workers:
            self.say(f"Stopping {len(self.workers)} workers: each finishes its current job "
                     f"(after {self.stop_timeout:g} s its job goes back to its queue)")
        if self.pool:
            self.pool.stop()
        if self.server:
            self.server.stop()
            self.say(f"Stopped the embedded Redis; its data stays in {self.server.data_dir} for the next run")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM (systemd, docker stop) stops ``up`` as Ctrl-C does, even where SIGINT was ignored."""
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def up(
    queues: Sequence[str] = (),
    workers: int = 2,
    url: str | None = None,
    demo: bool = False,
    exit_when_done: bool = False,
    local_url: str | None = None,
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    out: TextIO | None = None,
    dashboard_port: int | None = None,
    worker_class: str = WORKER_CLASS,
    concurrency: int | None = None,
) -> None:
    """Run a ``Stack`` until Ctrl-C or SIGTERM, then stop it cleanly; call from the main thread.

    ``demo`` also enqueues the demo batch (:mod:`tasks.demo`) and shows its progress table;
    with ``exit_when_done`` it returns once no demo job is queued or running. ``dashboard_port``:
    serve the dashboard there (0: any free port), on loopback. ``worker_class``, ``concurrency``:
    the workers' (:class:`rqplus.pool.WorkerPool`). A second Ctrl-C or SIGTERM during the stop
    hurries the workers to their cold shutdown (running jobs go back to their queues).
    Raises ``StackError`` (``exit_code`` 2 for an unusable ``url`` / ``$REDIS_URL``).

    Usage: ``up(["emails"], workers=4)``
    """
    data_dir = Path(data_dir)
    if demo:
        from tasks import demo as demo_jobs  # the repo's job package: only the demo needs it
        from tasks.logging import PATH_ENV

        queues = [*queues, *(name for name in (*demo_jobs.USE_CASE_QUEUES, demo_jobs.QUEUE) if name not in queues)]
        sink = demo_jobs.MailSink(data_dir / "mail")
    stack = Stack(queues or DEFAULT_QUEUES, workers=workers, url=url, local_url=local_url, data_dir=data_dir,
                  # the demo table needs the terminal to itself
                  worker_log=data_dir / "workers.log" if demo else None, out=out, dashboard_port=dashboard_port,
                  worker_class=worker_class, concurrency=concurrency)
    with _stopped_by_signals():
        try:
            if demo:
                stack.env = {**sink.start().environment(), PATH_ENV: str(data_dir / "events.jsonl")}
                stack.libraries += [library_named(name) for name in demo_jobs.LIBRARIES]
            stack.start()
            progress = None
            if demo:
                connection = stack.connection()
                use_cases = demo_jobs.UseCases(connection, sink, stack.env[PATH_ENV])
                progress = demo_jobs.Progress(Queue(demo_jobs.QUEUE, connection=connection), stack.out, use_cases)
                stack.say(progress.start())
            stack.say("Press Ctrl-C to stop.")
            while True:
                stack.check()
                if progress and progress.refresh() and exit_when_done:
                    break
                time.sleep(REFRESH_SECONDS)
        except KeyboardInterrupt:
            pass
        except RedisServerError as error:
            raise StackError(str(error)) from error
        except RedisError as error:
            raise StackError(f"Redis failed: {error}") from error
        finally:
            # a second Ctrl-C must not cut the shutdown short (that is how orphans are made): it only
            # hurries the workers to their cold shutdown
            for sig in _STOP_SIGNALS:
                signal.signal(sig, lambda signum, frame: stack.pool and stack.pool.hurry())
            stack.stop()
            if demo:
                sink.stop()
    stack.say("Stopped.")
