"""Shared fixtures: private redis-server processes on free loopback ports, and worker processes.

Never the machine's own Redis on 6379: every server here is started by a fixture and killed in
teardown.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from redis import Redis
from rq.job import Job, JobStatus

from rqplus import Queue
from rqplus.embedded import DURABLE_CONFIG, RedisServer, free_port
from rqplus.priority import window_counts_key
from rqplus.pool import kill_tree

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


def failed_in_bulk(queue: Queue, count: int, function: str = "tests.jobs.record",
                   exception: str = "ValueError", first: int = 0) -> list[Job]:
    """``count`` failed jobs of ``function`` (priorities cycling 9..0), failed with ``exception``
    as recorded in the job hash (as rqplus' quarantine and older RQ record it): written in
    pipelines, for the thousands a resume test needs."""
    jobs = queue.enqueue_many([Queue.prepare_data(function, (str(first + n),), priority=9 - (first + n) % 10)
                               for n in range(count)])
    connection = queue.connection
    registry = queue.failed_job_registry
    with connection.pipeline(transaction=False) as pipe:
        pipe.delete(queue.key, queue.window_key, window_counts_key(queue.name), *queue.backlog_keys)  # the ids only
        for job in jobs:
            pipe.hset(job.key, mapping={"status": JobStatus.FAILED.value,
                                        "exc_info": zlib.compress(f"Traceback ...\n{exception}: no".encode())})
            pipe.zadd(registry.key, {job.id: 9_999_999_999})
        pipe.execute()
    return jobs


ACL_FILE = ROOT / "deploy" / "users.acl"
REDIS_CONF = ROOT / "deploy" / "redis.conf"


def deploy_setting(name: str) -> str:
    """The value of setting ``name`` in deploy/redis.conf, as shipped."""
    return next(line.split(None, 1)[1] for line in REDIS_CONF.read_text().splitlines() if line.startswith(f"{name} "))
#: The harness' own ACL user on ``acl_server`` (set-up and ACL LOG reads), beside the shipped ones.
ACL_ADMIN = ("test-admin", "test-admin-password")


def acl_password(role: str) -> str:
    """The test password put in place of deploy/users.acl's ``#CHANGE-ME-<role>`` placeholder."""
    return f"test-{role}-p@ss/w:rd%"  # characters a URL must quote


class AclRedisServer(RedisServer):
    """A ``RedisServer`` loading an ACL file; its own clients sign in as ``ACL_ADMIN``."""

    def client(self, **options: object) -> Redis:
        options.setdefault("username", ACL_ADMIN[0])
        options.setdefault("password", ACL_ADMIN[1])
        return super().client(**options)

    def user_url(self, role: str) -> str:
        """``redis://rqplus-<role>:<password>@127.0.0.1:<port>/0`` for a user of deploy/users.acl."""
        return f"redis://rqplus-{role}:{quote(acl_password(role), safe='')}@127.0.0.1:{self.port}/0"


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[AclRedisServer]:
    """A durable private redis-server with deploy/users.acl as shipped, its placeholders replaced by
    ``acl_password(role)``, plus the harness' ``ACL_ADMIN`` user, and deploy/redis.conf's
    ``busy-reply-threshold``."""
    acl = tmp_path / "users.acl"
    users = re.sub(r"#CHANGE-ME-(\w+)", lambda match: f">{acl_password(match[1])}", ACL_FILE.read_text())
    acl.write_text(f"{users}user {ACL_ADMIN[0]} on >{ACL_ADMIN[1]} ~* &* +@all\n")
    config = {**DURABLE_CONFIG, "aclfile": acl, "busy-reply-threshold": deploy_setting("busy-reply-threshold")}
    with AclRedisServer(config=config, data_dir=tmp_path / "redis") as server:
        yield server


class TlsRedisServer(RedisServer):
    """A ``RedisServer`` speaking TLS only (``tls-port``, plain port 0), with a certificate of ``ca``."""

    def __init__(self, tls: dict[str, Path], **kwargs: Any) -> None:
        port = free_port()
        super().__init__(port=port, config={**kwargs.pop("config", {}), "port": 0, "tls-port": port,
                                            "tls-cert-file": tls["cert"], "tls-key-file": tls["key"],
                                            "tls-ca-cert-file": tls["ca"], "tls-auth-clients": "no"}, **kwargs)
        self.ca = tls["ca"]

    @property
    def url(self) -> str:
        """``rediss://127.0.0.1:<port>/0``: give it the CA (``ssl_ca_certs``) to connect."""
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self, **options: Any) -> Redis:
        return super().client(ssl=True, ssl_ca_certs=str(self.ca), **options)


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> dict[str, Path]:
    """A throw-away certificate authority (EC P-256, one day) in ``directory``: ``{"ca", "ca_key"}``."""
    ca, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", f"/CN={name}", "-keyout", key, "-out", ca)
    return {"ca": ca, "ca_key": key}


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA and a server certificate it signed for IP:127.0.0.1 and DNS:localhost
    (``ca``, ``cert``, ``key``), and the certificate of another CA (``unknown_ca``)."""
    directory = tmp_path_factory.mktemp("tls")
    files = {**make_ca(directory, "rqplus-test-ca"), "cert": directory / "server.pem", "key": directory / "server.key"}
    extensions = directory / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
            "-keyout", files["key"], "-out", directory / "server.csr")
    openssl("x509", "-req", "-in", directory / "server.csr", "-CA", files["ca"], "-CAkey", files["ca_key"],
            "-CAcreateserial", "-days", "1", "-extfile", extensions, "-out", files["cert"])
    files["unknown_ca"] = make_ca(directory, "unknown-ca")["ca"]
    return files


@pytest.fixture(scope="session")
def tls_server(tls_files: dict[str, Path]) -> Iterator[TlsRedisServer]:
    """One durable private redis-server for the session that speaks TLS only, its certificate signed by
    ``tls_files["ca"]``."""
    with TlsRedisServer(tls_files, config=DURABLE_CONFIG) as server:
        yield server


def doc_examples(path: Path, section: str) -> list[str]:
    """The fenced code blocks under the ``## section`` heading of a Markdown file, in order."""
    body = path.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```\w+\n(.*?)```", body, re.S)


def run_shell(code: str, replace: dict[str, str], cwd: Path = ROOT, stdin: str = "", **env: str) -> str:
    """Run a documented shell example with ``replace``'s substitutions (real hosts become test servers)
    and this venv's commands first on PATH; fail with its output unless it exits 0. Returns stdout."""
    for old, new in replace.items():
        assert old in code, f"the example no longer says {old!r}"
        code = code.replace(old, new)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    shell = subprocess.Popen(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env=subprocess_env(PATH=path, **env))
    try:
        out, err = shell.communicate(stdin, timeout=60)
    finally:
        kill_tree(shell.pid)  # nothing it started outlives the test, even on a timeout
    assert shell.returncode == 0, out + err
    return out


def overlapped(jobs) -> bool:
    """True when every job started before any of them ended: they all ran at once."""
    for job in jobs:
        job.refresh()
    return max(job.started_at for job in jobs) < min(job.ended_at for job in jobs)
