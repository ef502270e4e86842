"""Shared fixtures: private redis-server processes on free loopback ports, and worker processes.

Never the machine's own Redis on 6379: every server here is started by a fixture and killed in
teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis

from rqplus.embedded import RedisServer
from rqplus.stack import kill_tree

ROOT = Path(__file__).resolve().parent.parent

# workers started by the tests (in-process and subprocesses) may run the test job functions
os.environ.setdefault("RQPLUS_JOB_MODULES", "tasks,tests.jobs")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session (no persistence); tests get it flushed."""
    with RedisServer(config={"appendonly": "no"}) as server:
        yield server


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[Redis]:
    """A client of the session's private server, emptied before each test."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start extra private servers with the config a test needs: ``redis_factory(appendonly="yes")``.

    Each is killed in teardown.
    """
    servers: list[RedisServer] = []

    def start(**config: object) -> RedisServer:
        server = RedisServer(config={k.replace("_", "-"): v for k, v in config.items()},
                             data_dir=tmp_path / f"redis{len(servers)}")
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def commands_sent(server: RedisServer, seconds: float) -> list[str]:
    """The commands clients send to ``server`` during ``seconds`` (via MONITOR), without the ones
    Lua scripts run inside an EVAL: what the other processes cost Redis in round trips."""
    received = b""
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"MONITOR\r\n")
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                received += sock.recv(65536)
    # each line: +<time> [<db> <client>] "COMMAND" "arg"...; script-run ones name the client "lua"
    lines = [line.decode(errors="replace") for line in received.split(b"\r\n") if line.startswith(b"+1")]
    return [line.split("] ", 1)[1].replace('"', "") for line in lines if " lua]" not in line]


def aof_files_in(data_dir: Path) -> bool:
    """True when ``data_dir`` holds Redis' append-only file(s): a directory since Redis 7, one file before."""
    return (data_dir / "appendonlydir").is_dir() or (data_dir / "appendonly.aof").is_file()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: the repo root importable (for ``tests.jobs``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Processes:
    """Child processes started by a test, each in its own process group; all killed at teardown.

    Output goes to a file per process (a pipe nobody reads would block a chatty worker).
    """

    def __init__(self, log_dir: Path) -> None:
        self.started: list[subprocess.Popen] = []
        self.log_dir = log_dir
        self.logs: dict[int, Path] = {}

    def start(self, args: list[str], **env: str) -> subprocess.Popen:
        log = self.log_dir / f"process-{len(self.started)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(args, cwd=ROOT, env=subprocess_env(**env), start_new_session=True,
                                    stdout=out, stderr=subprocess.STDOUT, text=True)
        self.started.append(proc)
        self.logs[proc.pid] = log
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def finish(self, proc: subprocess.Popen, timeout: float = 60) -> str:
        """Wait for ``proc`` to exit by itself; return its output."""
        proc.wait(timeout)
        return self.output(proc)

    def rq_worker(self, url: str, *queues: str, worker_class: str = "rqplus.Worker",
                  queue_class: str | None = "rqplus.Queue", burst: bool = True, extra: tuple[str, ...] = (),
                  env: dict[str, str] | None = None) -> subprocess.Popen:
        """``rq worker`` exactly as a user types it (``python -m rq.cli`` is RQ's own entry point)."""
        args = [sys.executable, "-m", "rq.cli", "worker", "--url", url, "-w", worker_class]
        if queue_class:
            args += ["--queue-class", queue_class]
        if burst:
            args.append("--burst")
        return self.start(args + list(extra) + list(queues), **(env or {}))

    @staticmethod
    def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Signal the process group and every descendant: RQ's work-horse runs in its own group."""
        kill_tree(proc.pid, sig)

    def stop_all(self) -> None:
        for proc in self.started:
            self.kill_group(proc)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start child processes (``processes.rq_worker(url, "q")``); every group is SIGKILLed at teardown."""
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> object:
    """Poll ``predicate`` until truthy; fail the test with a clear message after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {getattr(predicate, '__name__', predicate)}")
