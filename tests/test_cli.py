"""`rqplus up` as users run it: a subprocess in its own directory, real Redis servers, real workers.

The machine's own Redis on 6379 is kept out: ``$RQPLUS_LOCAL_URL`` points the local probe at a
free port, which forces the embedded Redis; ``$REDIS_URL`` points at ``redis_factory`` servers.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis import Redis
from rq import Worker
from rq.registry import FinishedJobRegistry

from rqplus.cli import main
from rqplus.embedded import RedisServer, free_port
from tests.conftest import ROOT, wait_for
from tests.test_stack import processes_in

RUN_TIMEOUT = 60


class Run:
    """One ``rqplus`` process: its output goes to a file, so it can be read while it runs."""

    def __init__(self, cwd: Path, args: tuple[str, ...], env: dict[str, str], name: str):
        self.cwd = cwd
        self.log = cwd.parent / f"{name}.out"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "rqplus.cli", *args], cwd=cwd, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def output(self) -> str:
        return self.log.read_text()

    def finish(self, sig: int | None = None) -> str:
        """Send ``sig`` (if any), wait for the exit, return the output."""
        if sig is not None:
            self.proc.send_signal(sig)
        self.proc.wait(RUN_TIMEOUT)
        return self.output


@pytest.fixture
def rqplus(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Start ``rqplus ARGS`` in ``tmp_path/work`` with no ``$REDIS_URL`` unless given: ``rqplus("up", REDIS_URL=...)``.

    Teardown stops what a failed test left: the rqplus process, then anything still working there.
    """
    work = tmp_path.resolve() / "work"
    work.mkdir()
    runs: list[Run] = []

    def start(*args: str, **env: str) -> Run:
        base = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        runs.append(Run(work, args, {**base, **env}, f"run{len(runs)}"))
        return runs[-1]

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGTERM)
            try:
                run.proc.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(run.proc.pid, signal.SIGKILL)
    for pid in processes_in(work):
        os.kill(pid, signal.SIGKILL)


def local_url() -> dict[str, str]:
    """An ``$RQPLUS_LOCAL_URL`` where nothing answers, so ``up`` starts its embedded Redis there."""
    return {"RQPLUS_LOCAL_URL": f"redis://127.0.0.1:{free_port()}/0"}


def assert_stopped_cleanly(run: Run) -> str:
    out = run.output
    assert run.proc.returncode == 0, out
    assert "Traceback" not in out and out.rstrip().endswith("Stopped.")
    assert processes_in(run.cwd) == [], "a worker, work horse, scheduler or Redis outlived `up`"
    return out


def test_demo_runs_every_job_with_an_embedded_redis_and_leaves_nothing_behind(rqplus):
    env = local_url()
    run = rqplus("up", "--demo", "--exit-when-done", **env)
    run.finish()
    out = assert_stopped_cleanly(run)
    assert re.search(rf"Redis: embedded redis-server pid \d+ at {env['RQPLUS_LOCAL_URL']}, AOF on", out)
    assert re.search(r"Workers: 2 rqplus workers \(pids \d+, \d+\) with scheduler on queues payments, emails, events, demo", out)
    assert "priority   queued  started finished   failed" in out
    assert "   total        0        0       30        0" in out
    # the seed's use cases: 3 welcome emails + 3 receipts reached the local SMTP sink, 3 charges, 3 events
    assert "emails 3/3 sent, 6 received by the sink | payments 3/3 charged, ledger 3 | events 3 lines" in out
    assert len(list((run.cwd / ".rqplus" / "mail").glob("*.eml"))) == 6
    # two workers take jobs from the head of one priority-ordered list; each stamps started_at in its
    # own work horse, so a job may start just before the one dequeued right ahead of it
    started = re.search(r"30 finished, 0 failed\.\nPriorities in the order jobs started: (\d{30})", out).group(1)
    assert all(started[i] <= started[i + 2] for i in range(len(started) - 2)), started


def test_ctrl_c_stops_cleanly_and_the_next_run_finishes_the_jobs_left_queued(rqplus):
    env = local_url()
    first = rqplus("up", "--demo", **env)
    redis = wait_for(lambda: "Press Ctrl-C" in first.output and Redis.from_url(env["RQPLUS_LOCAL_URL"]))
    wait_for(lambda: FinishedJobRegistry("demo", connection=redis).count >= 2)
    first.finish(signal.SIGINT)
    assert "Stopping 2 workers" in assert_stopped_cleanly(first)

    second = rqplus("up", "--demo", "--exit-when-done", **env)
    second.finish()
    out = assert_stopped_cleanly(second)
    left = int(re.search(r"Demo: resuming (\d+) jobs left in queue 'demo' by a previous run", out).group(1))
    assert 0 < left <= 28  # >= 2 finished before Ctrl-C; during the shutdown workers may run use-case jobs
    assert "30 finished, 0 failed" in out, "the AOF kept every job, and none was run twice"


def test_redis_url_is_used_its_password_never_shown_and_sigterm_stops(rqplus, redis_factory):
    server = redis_factory(requirepass="s3cret-pw")
    url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
    run = rqplus("up", "--workers", "2", "emails", REDIS_URL=url, **local_url())
    # listening means ready: RQ registers a worker before it handles SIGTERM (a stale entry if killed then)
    wait_for(lambda: run.output.count("Listening on emails") == 2)
    assert Worker.count(connection=server.client()) == 2
    run.finish(signal.SIGTERM)
    out = assert_stopped_cleanly(run)
    assert f"Redis: redis://:***@127.0.0.1:{server.port}/0 (from $REDIS_URL)" in out
    assert "warning: this Redis is not durable: AOF is off" in out
    assert "s3cret-pw" not in out and "embedded" not in out
    assert Worker.count(connection=server.client()) == 0, "workers unregistered: a warm shutdown"


def http_get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    """GET ``url`` without following redirects: (status, body)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object) -> None:
        return None


def test_up_serves_the_dashboard_closed_with_a_password_made_up_for_the_run(rqplus, redis_factory):
    server = redis_factory()
    env = {k: "" for k in ("RQPLUS_DASHBOARD_USERNAME", "RQPLUS_DASHBOARD_PASSWORD")}
    run = rqplus("up", "--dashboard-port", "0", "emails", REDIS_URL=server.url, **env)
    line = wait_for(lambda: re.search(r"Dashboard: (http://127\.0\.0\.1:\d+/) - user admin, password (\S+) ",
                                      run.output))
    home, password = line.group(1), line.group(2)
    assert http_get(home + "rq/0/data/queues.json")[0] == 401
    assert http_get(home + "rq/0/data/queues.json", auth=("admin", password))[0] == 200
    assert http_get(home, auth=("admin", "wrong"))[0] == 401   # a script (no Accept: text/html): no login redirect
    status, page = http_get(home, auth=("admin", password))
    assert status == 200 and "Queues by priority" in page
    run.finish(signal.SIGTERM)
    assert_stopped_cleanly(run)
    with pytest.raises(urllib.error.URLError):
        http_get(home)


def test_up_without_the_dashboard(rqplus, redis_factory):
    run = rqplus("up", "--no-dashboard", "emails", REDIS_URL=redis_factory().url)
    wait_for(lambda: "Press Ctrl-C" in run.output)
    run.finish(signal.SIGTERM)
    assert "Dashboard" not in assert_stopped_cleanly(run)


@pytest.mark.parametrize("args, env", [
    ((), {"REDIS_URL": "redis://:s3cret-pw@127.0.0.1:{port}/0"}),
    (("--url", "rediss://:s3cret-pw@127.0.0.1:{port}/0"), {}),
    (("--url", "http://:s3cret-pw@127.0.0.1:{port}/"), {}),
])
def test_an_unusable_redis_is_one_line_and_exit_2(rqplus, args, env):
    port = free_port()
    run = rqplus("up", *(arg.format(port=port) for arg in args), **{k: v.format(port=port) for k, v in env.items()})
    out = run.finish()
    assert run.proc.returncode == 2, out
    assert len(out.splitlines()) == 1 and out.startswith("rqplus up: error: ") and "***" in out
    assert "s3cret-pw" not in out and "Traceback" not in out


def test_exit_when_done_needs_demo():
    result = CliRunner().invoke(main, ["up", "--exit-when-done"])
    assert result.exit_code == 2 and "--exit-when-done needs --demo" in result.output


# --- rqplus check -------------------------------------------------------------------------------

DURABLE = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory_policy": "noeviction"}


def rqplus_check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``rqplus check ARGS`` as a user runs it, with no ``$REDIS_URL`` unless given; stdout and stderr apart."""
    base = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "rqplus.cli", "check", *args], cwd=tmp_path, env={**base, **env},
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def assert_report(result: subprocess.CompletedProcess, exit_code: int) -> str:
    out = result.stdout
    assert result.returncode == exit_code, (out, result.stderr)
    assert result.stderr == "" and "Traceback" not in out
    assert out.startswith(f"durable: {'yes' if exit_code == 0 else 'NO'} - "), "the verdict comes first"
    assert "\nfacts:\n" in out and re.search(r"\n  aof_enabled +(True|False)\n", out), "the raw facts are shown"
    return out


def test_check_passes_a_durable_redis(tmp_path, redis_factory):
    server = redis_factory(**DURABLE)
    out = assert_report(rqplus_check(tmp_path, "--url", server.url), 0)
    assert out.startswith(f"durable: yes - {server.url} (from --url)\n")
    assert "problems:" not in out and "warnings:" not in out
    assert re.search(r"\n  appendfsync +everysec\n", out) and re.search(r"\n  maxmemory_policy +noeviction\n", out)


def test_check_fails_without_aof_and_lists_problems_then_warnings_then_facts(tmp_path, redis_factory):
    server = redis_factory(appendonly="no", maxmemory_policy="volatile-lru")
    out = assert_report(rqplus_check(tmp_path, "--url", server.url), 1)
    problem = re.search(r"\nproblems:\n  - AOF is off: .*\n", out).group(0)
    assert "Fix: `appendonly yes`" in problem, "each problem comes with its fix"
    assert "\nwarnings:\n  - maxmemory-policy volatile-lru can evict RQ keys" in out
    assert out.index("problems:") < out.index("warnings:") < out.index("facts:")


def test_check_fails_with_an_allkeys_eviction_policy(tmp_path, redis_factory):
    server = redis_factory(appendonly="yes", maxmemory_policy="allkeys-lru")
    out = assert_report(rqplus_check(tmp_path, "--url", server.url), 1)
    assert "  - maxmemory-policy allkeys-lru lets Redis silently evict" in out
    assert "Fix: `maxmemory-policy noeviction`" in out and "AOF is off" not in out


def test_check_with_config_renamed_reads_info_and_warns_that_appendfsync_is_unknown(tmp_path, redis_factory):
    server = redis_factory(appendonly="yes", rename_command=("CONFIG", ""))
    out = assert_report(rqplus_check(tmp_path, "--url", server.url), 0)
    assert "\nwarnings:\n  - appendfsync cannot be read here (CONFIG is renamed or forbidden)" in out
    assert re.search(r"\n  config_readable +False\n", out) and re.search(r"\n  appendfsync +unknown\n", out)


def test_check_passes_redis_started_with_the_shipped_redis_conf(tmp_path):
    with RedisServer(conf_file=ROOT / "deploy" / "redis.conf", data_dir=tmp_path / "redis") as server:
        out = assert_report(rqplus_check(tmp_path, "--url", server.url), 0)
    assert "problems:" not in out and "warnings:" not in out


def test_check_honours_redis_url_and_url_option_wins(tmp_path, redis_factory):
    durable, volatile = redis_factory(**DURABLE), redis_factory(appendonly="no")
    out = assert_report(rqplus_check(tmp_path, REDIS_URL=durable.url), 0)
    assert out.startswith(f"durable: yes - {durable.url} (from $REDIS_URL)\n")
    out = assert_report(rqplus_check(tmp_path, REDIS_URL=volatile.url), 1)
    assert out.startswith(f"durable: NO - {volatile.url} (from $REDIS_URL)\n")
    assert_report(rqplus_check(tmp_path, "--url", durable.url, REDIS_URL=volatile.url), 0)


def test_check_with_the_right_password_never_shows_it(tmp_path, redis_factory):
    server = redis_factory(requirepass="s3cret-pw", **DURABLE)
    out = assert_report(rqplus_check(tmp_path, REDIS_URL=f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"), 0)
    assert out.startswith(f"durable: yes - redis://:***@127.0.0.1:{server.port}/0 (from $REDIS_URL)\n")
    assert "s3cret-pw" not in out


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers: a hung Redis."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


UNUSABLE = {  # case: (URL, what the error line says), with {free}, {silent} and {auth} ports filled in
    "refused": ("redis://:s3cret-pw@127.0.0.1:{free}/0", "cannot reach Redis at redis://:***@127.0.0.1:{free}/0"),
    "timeout": ("redis://:s3cret-pw@127.0.0.1:{silent}/0", "cannot reach Redis at redis://:***@127.0.0.1:{silent}/0"),
    "dns": ("redis://:s3cret-pw@no-such-host.invalid:6379/0", "reach Redis at redis://:***@no-such-host.invalid"),
    "scheme": ("http://:s3cret-pw@127.0.0.1:{free}/", "http://:***@127.0.0.1:{free}/ is not a Redis URL"),
    "port": ("redis://:s3cret-pw@127.0.0.1:notaport/0", "redis://:***@127.0.0.1:notaport/0: the port is not a number"),
    "wrong password": ("redis://:s3cret-pw@127.0.0.1:{auth}/0",
                       "Redis at redis://:***@127.0.0.1:{auth}/0 (from --url) refused the credentials"),
}


@pytest.mark.parametrize("case", UNUSABLE)
def test_check_of_an_unusable_redis_is_one_line_on_stderr_and_exit_2(tmp_path, redis_factory, silent_port, case):
    url, says = UNUSABLE[case]
    ports = {"free": free_port(), "silent": silent_port, "auth": redis_factory(requirepass="other-pw").port}
    started = time.monotonic()
    result = rqplus_check(tmp_path, "--url", url.format(**ports))
    elapsed = time.monotonic() - started
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("rqplus check: error: ") and says.format(**ports) in result.stderr
    assert "s3cret-pw" not in result.stderr and "Traceback" not in result.stderr
    assert elapsed < 15, f"one short attempt, no retries: took {elapsed:.1f}s"


def test_check_of_an_unreachable_redis_url_says_where_it_came_from(tmp_path):
    result = rqplus_check(tmp_path, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 2 and result.stdout == ""
    assert "(from $REDIS_URL)" in result.stderr and len(result.stderr.splitlines()) == 1
