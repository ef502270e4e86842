"""rqplus/stack.py and tasks/demo.py in-process: which Redis is used, workers started and stopped
without orphans, the demo batch and its table. Real servers, never port 6379."""

from __future__ import annotations

import base64
import http.client
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rq import Worker
from rq.job import Job

from rqplus import Queue
from rqplus.embedded import free_port
from rqplus.pool import drain
from rqplus.stack import RedisUnavailable, Stack, port_is_free, why_not_redis
from tasks import demo
from tests.conftest import aof_files_in, wait_for


def processes_in(directory: Path) -> list[int]:
    """Live processes (zombies excluded) whose working directory is ``directory`` or below,
    other than this one: how a test finds whatever a stack left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone, or a zombie
            continue
        if cwd == directory or directory in cwd.parents:
            found.append(int(entry.name))
    return found


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a new directory (workers inherit it; ``redis_factory`` servers live beside it) with no ``$REDIS_URL``."""
    work = tmp_path.resolve() / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("REDIS_URL", raising=False)
    return work


def test_why_not_redis_says_why_without_the_password(redis_factory):
    server = redis_factory(requirepass="s3cret")
    assert why_not_redis(f"redis://:s3cret@127.0.0.1:{server.port}/0") is None
    refused = why_not_redis(f"redis://:wrong-s3cret@127.0.0.1:{server.port}/0")
    assert "refused the credentials" in refused and "s3cret" not in refused
    assert why_not_redis(f"redis://127.0.0.1:{free_port()}/0") == "nothing answers"
    assert not port_is_free(server.port) and port_is_free(free_port())


def test_configured_url_is_used_and_workers_run_jobs(redis_factory, in_tmp, monkeypatch):
    server = redis_factory()
    monkeypatch.setenv("REDIS_URL", server.url)
    out = io.StringIO()
    with Stack(["q"], workers=1, out=out) as stack:
        assert stack.url == server.url and stack.server is None
        job = Queue("q", connection=server.client()).enqueue(demo.work, 0, "hello")
        wait_for(lambda: job.get_status(refresh=True) == "finished")
    assert f"Redis: {server.url} (from $REDIS_URL)" in out.getvalue()
    assert "warning: this Redis is not durable" in out.getvalue()  # the factory's server has no AOF
    assert processes_in(in_tmp) == []
    assert Worker.count(connection=server.client()) == 0, "workers stopped cleanly, not killed"
    assert not (in_tmp / ".rqplus").exists()


def test_credentials_from_the_environment_reach_the_workers_but_no_command_line(redis_factory, in_tmp, monkeypatch):
    server = redis_factory(requirepass="s3cret-pw")
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{server.port}/0")
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret-pw")
    out = io.StringIO()
    with Stack(["q"], workers=1, out=out) as stack:
        job = Queue("q", connection=server.client()).enqueue(demo.work, 0, "hello")
        wait_for(lambda: job.get_status(refresh=True) == "finished")
        command_lines = [Path(f"/proc/{worker.pid}/cmdline").read_bytes() for worker in stack.workers]
    assert command_lines and not any(b"s3cret" in line for line in command_lines)
    assert f"Redis: redis://:***@127.0.0.1:{server.port}/0 (from $REDIS_URL)" in out.getvalue()
    assert "s3cret" not in out.getvalue()


def test_embedded_redis_is_durable_local_and_keeps_its_data(in_tmp):
    port = free_port()
    out = io.StringIO()
    with Stack(["q"], workers=0, local_url=f"redis://127.0.0.1:{port}/0", out=out) as stack:
        config = stack.connection().config_get("*")
        assert stack.url == f"redis://127.0.0.1:{port}/0"
        assert (config["appendonly"], config["appendfsync"], config["maxmemory-policy"], config["bind"]) == \
               ("yes", "everysec", "noeviction", "127.0.0.1")
        assert Path(config["dir"]) == in_tmp / ".rqplus" / "redis"
    assert f"at redis://127.0.0.1:{port}/0, AOF on, data in .rqplus/redis" in out.getvalue()
    assert processes_in(in_tmp) == []
    assert aof_files_in(in_tmp / ".rqplus/redis")


def test_a_redis_already_running_at_the_local_url_is_used(redis_factory, in_tmp):
    running = redis_factory()
    out = io.StringIO()
    with Stack([], workers=0, local_url=running.url, out=out) as stack:
        assert stack.url == running.url and stack.server is None
    assert f"Redis: {running.url} (already running)" in out.getvalue()


def test_a_taken_local_port_moves_the_embedded_redis_to_a_free_one(redis_factory, in_tmp):
    taken = redis_factory(requirepass="s3cret")  # a password-protected Redis where we look
    out = io.StringIO()
    with Stack([], workers=0, local_url=f"redis://127.0.0.1:{taken.port}/0", out=out) as stack:
        assert stack.server.port != taken.port
        assert stack.connection().ping()
    assert f"(port {taken.port} is taken: it refused the credentials" in out.getvalue()


@pytest.mark.parametrize("url", ["redis://:s3cret@127.0.0.1:{port}/0", "http://:s3cret@127.0.0.1:{port}/"])
def test_an_unusable_configured_url_is_an_error_of_its_own(in_tmp, url):
    with pytest.raises(RedisUnavailable) as error:
        Stack(url=url.format(port=free_port()), out=io.StringIO()).start()
    assert error.value.exit_code == 2 and "s3cret" not in str(error.value) and "***" in str(error.value)


def test_draining_kills_what_ignores_sigterm_with_its_children(tmp_path):
    stubborn = [sys.executable, "-c", "import signal, subprocess, sys, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                "print('ready', flush=True); time.sleep(60)"]
    worker = subprocess.Popen(stubborn, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline() == "ready\n"
    drain([worker], timeout=0.5, grace=0.5)  # warm, cold: both ignored
    assert worker.returncode == -9
    wait_for(lambda: processes_in(tmp_path.resolve()) == [], timeout=5)


def test_a_job_still_running_at_the_stop_deadline_goes_back_to_its_queue(redis_factory, in_tmp, monkeypatch):
    """The cold shutdown hands the job back; RQ's work-horse runs in a process group of its own, and
    nothing of it outlives the stack."""
    server = redis_factory()
    monkeypatch.setenv("REDIS_URL", server.url)
    with Stack(["q"], workers=1, stop_timeout=1, out=io.StringIO()):
        job = Queue("q", connection=server.client()).enqueue(demo.work, 60, "outlives the deadline")
        wait_for(lambda: job.get_status(refresh=True) == "started")
    wait_for(lambda: processes_in(in_tmp) == [], timeout=5)
    assert job.get_status(refresh=True) == "queued", "the cold shutdown handed it back"


def test_a_worker_that_dies_is_replaced(redis_factory, in_tmp, monkeypatch):
    server = redis_factory()
    monkeypatch.setenv("REDIS_URL", server.url)
    with Stack(["q"], workers=1, out=io.StringIO()) as stack:
        first = stack.workers[0]
        wait_for(lambda: Worker.count(connection=server.client()) == 1)
        first.kill()
        wait_for(lambda: stack.check() or stack.workers and stack.workers[0].pid != first.pid)
        job = Queue("q", connection=server.client()).enqueue(demo.work, 0, "after the replacement")
        wait_for(lambda: job.get_status(refresh=True) == "finished")
    assert processes_in(in_tmp) == []


def test_demo_batch_is_queued_most_urgent_first_and_resumed_not_doubled(redis):
    queue = Queue(demo.QUEUE, connection=redis)
    out = io.StringIO()
    progress = demo.Progress(queue, out)
    assert "enqueued 30 jobs" in progress.start()
    ids = queue.get_job_ids()
    assert demo.priorities(queue, ids) == sorted(demo.priorities(queue, ids))
    assert "resuming 30 jobs" in demo.Progress(queue, out).start()
    assert queue.count == 30

    assert progress.refresh() is False
    assert "       0        3        0        0        0" in out.getvalue()
    for n, job_id in enumerate(ids):  # as if a worker ran them all, in queue order
        queue.remove(job_id)
        redis.hset(Job.key_for(job_id), "started_at", f"2030-01-01T00:00:{n:02}.000000Z")
        queue.finished_job_registry.add(Job.fetch(job_id, connection=redis), 500)
    assert progress.refresh() is True
    assert out.getvalue().rstrip().endswith(
        "30 finished, 0 failed.\nPriorities in the order jobs started: " + "".join(str(p) * 3 for p in range(10)))


def test_the_dashboard_stops_with_the_stack_even_with_a_connection_open(redis_factory, in_tmp, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_factory().url)
    monkeypatch.setenv("RQPLUS_DASHBOARD_USERNAME", "ops")
    monkeypatch.setenv("RQPLUS_DASHBOARD_PASSWORD", "a long passphrase")
    with Stack(["q"], workers=1, dashboard_port=0, out=io.StringIO()) as stack:
        port = stack.dashboard.port
        thread = stack.dashboard._thread
        keep_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        keep_alive.request("GET", "/metrics", headers={"Authorization": "Basic " + base64.b64encode(
            b"ops:a long passphrase").decode()})
        response = keep_alive.getresponse()
        assert response.status == 200 and b"rqplus_redis_durable" in response.read()
    assert not thread.is_alive(), "the dashboard thread ended"
    with pytest.raises(OSError):
        keep_alive.request("GET", "/metrics")
        keep_alive.getresponse()
    with pytest.raises(ConnectionRefusedError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=5).request("GET", "/")
