"""The dashboard application: rq-dashboard at ``/rq`` (secured, patched) and rqplus' pages at ``/``,
served by waitress.

Usage::

    from rqplus.dashboard import create_app, serve
    serve(create_app("redis://127.0.0.1:6379/0"), "127.0.0.1", 9181)   # credentials from the environment
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path

from flask import Flask, jsonify, render_template
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import DeserializationError
from waitress import wasyncore
from waitress.server import BaseWSGIServer, MultiSocketServer, create_server
from waitress.task import ThreadedTaskDispatcher

from rqplus.connections import connect, explain, redis_url
from rqplus.dashboard import actions, rqdashboard, security
from rqplus.dashboard.actions import ActionError
from rqplus.dashboard.masking import Masker
from rqplus.dashboard.security import Credentials
from rqplus.dashboard.views import Dashboard, blueprint
from rqplus.defaults import DASHBOARD_HOST, DASHBOARD_PORT, DASHBOARD_PREFIX

HERE = Path(__file__).resolve().parent
#: Keeps sessions valid across restarts and between processes serving one dashboard; random otherwise.
SECRET_KEY_ENV = "RQPLUS_DASHBOARD_SECRET_KEY"
log = logging.getLogger(__name__)


class DashboardConfigError(ValueError):
    """The dashboard cannot start as configured (no credentials, --no-auth on a public address)."""


def create_app(url: str | None = None, *, credentials: Credentials | None = None, auth: bool = True,
               prefix: str = DASHBOARD_PREFIX, secret_key: str | None = None,
               mask_keys: Iterable[str] | None = None) -> Flask:
    """The dashboard as a Flask app, for ``serve`` or for mounting in an existing WSGI app.

    ``url``: the Redis (default ``$REDIS_URL``, see :mod:`rqplus.connections`). ``credentials``:
    default from ``$RQPLUS_DASHBOARD_USERNAME`` / ``$RQPLUS_DASHBOARD_PASSWORD``; without them
    :class:`DashboardConfigError` is raised unless ``auth=False`` (then anyone reaching the port
    may use it). Bulk requeues left running by a dashboard that died are taken up again, by
    threads of this process. ``prefix``: where rq-dashboard's pages live. ``mask_keys``: key fragments whose
    values are masked, exactly these (default: ``rqplus.dashboard.masking.DEFAULT_MASK_KEYS``
    with ``$RQPLUS_DASHBOARD_MASK_KEYS``'s changes); URL passwords and Bearer/Basic credentials
    are masked whatever the keys.

    Usage: ``DispatcherMiddleware(main_app, {"/queues": create_app(credentials=Credentials("ops", pw))})``
    """
    if auth:
        credentials = credentials or Credentials.from_env()
        if credentials is None:
            raise DashboardConfigError(
                f"no dashboard credentials: set {security.USERNAME_ENV} and {security.PASSWORD_ENV} "
                "(or run with --no-auth, loopback only)")
    else:
        credentials = None
    chosen = redis_url(url)
    app = Flask(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.config["SECRET_KEY"] = secret_key or os.environ.get(SECRET_KEY_ENV) or secrets.token_hex(32)
    board = Dashboard(connect(chosen), Masker(mask_keys), chosen)
    app.extensions["rqplus.dashboard"] = board
    security.install(app, credentials)
    app.register_blueprint(blueprint)
    rqdashboard.mount(app, prefix)
    _answer_cleanly(app)
    actions.requeue_throttle()  # a bad $RQPLUS_REQUEUE_THROTTLE fails the start, not a run's thread
    try:
        actions.resume_requeues(board.connection)
    except RedisError as error:  # Redis out of reach now: the pages say so; runs resume at a later start
        log.warning("bulk requeues not resumed: %s", explain(error))
    return app


def _answer_cleanly(app: Flask) -> None:
    """Refusals and unreadable data answer with a status and a message, never a bare HTTP 500."""

    def answer(status: int, message: str):
        if security.wants_html():
            return render_template("rqplus/error.html", status=status, message=message), status
        return jsonify(status="ERROR", message=message), status

    app.register_error_handler(ActionError, lambda error: answer(error.status, error.message))
    app.register_error_handler(DeserializationError, lambda error: answer(409, "this job's data cannot be read"))
    app.register_error_handler(pickle.UnpicklingError, lambda error: answer(409, "this job's data cannot be read"))
    # 503 only when Redis is out of reach; a command Redis refuses (WRONGTYPE: a key of another
    # type where RQ expects its own) is data that cannot be read, with Redis' own words
    board = app.extensions["rqplus.dashboard"]
    for unreachable in (RedisConnectionError, RedisTimeoutError):
        app.register_error_handler(unreachable, lambda error: answer(
            503, f"Redis at {board.shown_url} cannot be reached: {type(error).__name__}"))
    app.register_error_handler(RedisError, lambda error: answer(
        409, f"Redis refused to read this data: {board.masker.text(str(error))}"))


class Server:
    """``app`` served by waitress (a production WSGI server, ``threads`` threads), bound at creation.

    ``port=0`` takes a free port. A host name that resolves to several addresses (``localhost``:
    127.0.0.1 and ::1) is served on each. :meth:`run` serves in the foreground until Ctrl-C;
    :meth:`start` in a thread beside other work (``rqplus up``); :meth:`stop` ends it whole:
    listening sockets, open keep-alive connections and the worker threads (waitress' own
    ``close()`` of a single-socket server closes the listening socket only).

    Usage::

        server = Server(create_app(), "127.0.0.1", 0)
        print(server.urls)         # ['http://127.0.0.1:40123/']
        server.start()             # ... then server.stop()
    """

    def __init__(self, app: Flask, host: str = DASHBOARD_HOST, port: int = DASHBOARD_PORT, threads: int = 8) -> None:
        # the dispatcher's threads start before the socket binds: when binding fails (port taken),
        # they are stopped here instead of idling on for the life of the process
        dispatcher = ThreadedTaskDispatcher()
        dispatcher.set_thread_count(threads)
        try:
            self.waitress: BaseWSGIServer | MultiSocketServer = create_server(
                app, host=host, port=port, ident="rqplus-dashboard", _dispatcher=dispatcher)
        except BaseException:
            dispatcher.shutdown()
            raise
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def listening(self) -> list[tuple[str, int]]:
        """Every ``(address, port)`` served."""
        if isinstance(self.waitress, MultiSocketServer):
            return [(host, port) for host, port in self.waitress.effective_listen]
        return [(self.waitress.effective_host, self.waitress.effective_port)]

    @property
    def port(self) -> int:
        """The port served (the one chosen when created with ``port=0``)."""
        return self.listening[0][1]

    @property
    def urls(self) -> list[str]:
        """A URL per address served: ``["http://127.0.0.1:9181/"]``."""
        return [f"http://{f'[{host}]' if ':' in host else host}:{port}/" for host, port in self.listening]

    def run(self) -> None:
        """Serve until Ctrl-C (SIGINT), then stop.

        Usage: ``Server(create_app(), "127.0.0.1", 9181).run()``
        """
        try:
            self.waitress.run()  # returns on KeyboardInterrupt
        finally:
            self.stop()

    def start(self) -> None:
        """Serve from a daemon thread of this process.

        Usage: ``server.start(); ...; server.stop()``
        """
        self._thread = threading.Thread(target=self._serve, name="rqplus-dashboard", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.waitress.run()
        except (OSError, ValueError):
            # stop() closes the sockets while the loop may sit in select() on them (EBADF): that
            # is the loop's end, not an error; anything before a stop is
            if not self._stopping:
                raise

    def stop(self) -> None:
        """Stop serving: sockets and connections closed, worker threads ended (idempotent).

        Usage: ``server.stop()``
        """
        self._stopping = True
        self.waitress.task_dispatcher.shutdown()
        wasyncore.close_all(self.waitress.map if isinstance(self.waitress, MultiSocketServer) else self.waitress._map)
        if self._thread is not None:
            self._thread.join(5)


def serve(app: Flask, host: str = DASHBOARD_HOST, port: int = DASHBOARD_PORT) -> None:
    """Serve ``app`` with waitress until Ctrl-C.

    Usage: ``serve(create_app(), "127.0.0.1", 9181)``
    """
    Server(app, host, port).run()
