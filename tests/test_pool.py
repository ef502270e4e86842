"""rqplus/pool.py and `rqplus worker`: real pools of real `rq worker` processes on a private Redis,
killed with real signals; `rq worker-pool` with rqplus's classes on the installed rq."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from redis import Redis
from rq import Retry
from rq import Worker as RQWorker
from rq.job import Job

from rqplus import Queue
from rqplus.cli import main
from rqplus.pool import MAX_QUICK_EXITS, WorkerPool, descendants
from tests.conftest import ROOT, Processes, doc_examples, overlapped, run_shell, wait_for
from tests.jobs import ran
from tests.pickles import assert_forgeries_change_nothing

STARTED = re.compile(r"worker (\d+)/\d+ started, pid (\d+)")


def rqplus_worker(processes: Processes, url: str, *args: str) -> subprocess.Popen:
    """``rqplus worker --url URL ARGS`` as a user runs it (its output: ``processes.output(proc)``)."""
    return processes.start([sys.executable, "-m", "rqplus.cli", "worker", "--url", url, *args])


def children(processes: Processes, pool: subprocess.Popen) -> dict[int, int]:
    """The pool's current child of each slot, from its log: {slot: pid}."""
    return {int(slot): int(pid) for slot, pid in STARTED.findall(processes.output(pool))}


def stop(processes: Processes, pool: subprocess.Popen, *signals: int) -> str:
    """Send ``signals`` to the pool (waiting for it to say it is stopping after the first), wait for
    its exit; returns its output."""
    for n, sig in enumerate(signals):
        pool.send_signal(sig)
        if n == 0 and len(signals) > 1:
            wait_for(lambda: "stopping" in processes.output(pool))
    return processes.finish(pool, timeout=60)


def started(job: Job) -> bool:
    return job.get_status(refresh=True) == "started"


def ready(connection: Redis, count: int) -> Callable[[], bool]:
    """A predicate: ``count`` workers wait for jobs. RQ registers a worker before it handles SIGTERM
    (a SIGTERM then kills it, its entry stays): idle means in the work loop, signals handled."""
    return lambda: [worker.get_state() for worker in RQWorker.all(connection=connection)] == ["idle"] * count


def test_a_pool_of_two_runs_the_jobs_of_several_queues_then_exits_after_its_burst(redis, redis_server, processes):
    tags = {}
    for name in ("emails", "payments"):
        queue = Queue(name, connection=redis)
        for n in range(4):
            tags[queue.enqueue("tests.jobs.record", f"{name}-{n}", 0.1, priority=9 - n).args[0]] = name
    pool = rqplus_worker(processes, redis_server.url, "--processes", "2", "--burst", "emails", "payments")
    out = processes.finish(pool)
    assert pool.returncode == 0, out
    assert sorted(ran(redis)) == sorted(tags), out
    assert len(children(processes, pool)) == 2 and out.count("finished its burst") == 2
    assert "-w rqplus.Worker --queue-class rqplus.Queue --with-scheduler --burst emails payments" in out
    assert all(Job.fetch(job_id, connection=redis).get_status() == "finished"
               for name in ("emails", "payments") for job_id in Queue(name, connection=redis).finished_job_registry
               .get_job_ids())
    assert RQWorker.count(connection=redis) == 0


def test_a_killed_worker_is_replaced_its_orphaned_horse_killed_and_jobs_keep_running(redis, redis_server,
                                                                                    processes):
    queue = Queue("q", connection=redis)
    pool = rqplus_worker(processes, redis_server.url, "--processes", "2", "q")
    wait_for(ready(redis, 2))
    long = queue.enqueue("tests.jobs.record", "long", 60)
    wait_for(lambda: started(long))
    worker_name = Job.fetch(long.id, connection=redis).worker_name
    worker = RQWorker.find_by_key(RQWorker.redis_worker_namespace_prefix + worker_name, connection=redis)
    slot = next(slot for slot, pid in children(processes, pool).items() if pid == worker.pid)
    left = descendants(worker.pid)  # its work-horse among them
    assert left

    os.kill(worker.pid, signal.SIGKILL)  # the worker alone, as the OOM killer would
    wait_for(lambda: children(processes, pool)[slot] != worker.pid)
    assert f"worker {slot} (pid {worker.pid}) was killed by SIGKILL" in processes.output(pool)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in left), timeout=5)

    jobs = [queue.enqueue("tests.jobs.record", f"after-{n}", priority=0) for n in range(4)]
    wait_for(lambda: all(job.get_status(refresh=True) == "finished" for job in jobs))
    out = stop(processes, pool, signal.SIGTERM)
    assert pool.returncode == 0, out
    assert Counter(ran(redis))["long"] == 1


def test_sigterm_lets_the_running_job_finish_then_the_pool_exits_0(redis, redis_server, processes):
    pool = rqplus_worker(processes, redis_server.url, "--processes", "2", "q")
    wait_for(ready(redis, 2))
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "slow", 2)
    wait_for(lambda: started(job))
    out = stop(processes, pool, signal.SIGTERM)
    assert pool.returncode == 0, out
    assert job.get_status(refresh=True) == "finished"
    assert "cold shutdown of" not in out and out.rstrip().endswith("rqplus worker: stopped")
    assert RQWorker.count(connection=redis) == 0, "each worker unregistered: warm shutdowns"


@pytest.mark.parametrize("options, signals", [
    (("--stop-timeout", "1"), (signal.SIGTERM,)),    # the stop timeout passes
    ((), (signal.SIGINT, signal.SIGINT)),            # a second Ctrl-C does not wait for it (default 30 s)
], ids=["stop-timeout", "second-ctrl-c"])
def test_a_job_still_running_when_the_pool_must_stop_goes_back_to_its_queue(redis, redis_server, processes,
                                                                              options, signals):
    queue = Queue("q", connection=redis)
    pool = rqplus_worker(processes, redis_server.url, "--processes", "1", *options, "q")
    wait_for(ready(redis, 1))
    job = queue.enqueue("tests.jobs.record", "stuck", 60, priority=3)
    wait_for(lambda: started(job))
    children_before = descendants(pool.pid)
    out = stop(processes, pool, *signals)
    assert pool.returncode == 0, out
    assert "cold shutdown of 1 worker(s)" in out and "killed worker" not in out
    assert job.get_status(refresh=True) == "queued" and queue.get_job_ids() == [job.id]
    assert queue.failed_job_registry.count == 0 and queue.started_job_registry.count == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in children_before)


def test_workers_that_cannot_start_stop_the_pool_with_a_clear_error_not_a_restart_loop(redis_server, processes):
    pool = rqplus_worker(processes, redis_server.url, "--processes", "2", "--worker-class", "rqplus.NoSuchWorker", "q")
    out = processes.finish(pool, timeout=60)
    assert pool.returncode == 1, out
    assert re.search(rf"rqplus worker: error: worker \d \(pid \d+\) exited with status 1 after [\d.]+ s: its "
                     rf"{MAX_QUICK_EXITS} last workers all exited within 10 s of their start, not restarting it",
                     out), out
    assert "Invalid attribute name: NoSuchWorker" in out, "the workers' own error is shown"
    starts = Counter(slot for slot, _ in STARTED.findall(out))
    assert max(starts.values()) == MAX_QUICK_EXITS and sum(starts.values()) <= 2 * MAX_QUICK_EXITS


def test_an_unreachable_redis_is_one_line_and_exit_2(tmp_path):
    from rqplus.embedded import free_port

    result = subprocess.run([sys.executable, "-m", "rqplus.cli", "worker", "--url",
                             f"redis://:s3cret@127.0.0.1:{free_port()}/0", "q"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("rqplus worker: error: cannot use Redis at redis://:***@127.0.0.1:")
    assert "nothing answers" in result.stderr and "s3cret" not in result.stderr


def test_threads_and_async_are_exclusive():
    result = CliRunner().invoke(main, ["worker", "--threads", "2", "--async", "2", "q"])
    assert result.exit_code == 2 and "--threads and --async are exclusive" in result.output


def test_children_get_the_worker_class_concurrency_and_url_but_no_password_on_a_command_line(redis_factory):
    server = redis_factory(requirepass="s3cret-pw")
    url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
    with WorkerPool(["q"], 2, worker_class="rqplus.Worker", concurrency=3, url=url, env={"X_EXTRA": "1"},
                    scheduler=False) as pool:
        assert len(pool.processes) == 2
        wait_for(ready(server.client(), 2))
        for process in pool.processes:
            command = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
            environ = set(Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0"))
            assert command[1:] == [b"-m", b"rq.cli", b"worker", b"-w", b"rqplus.Worker", b"--queue-class",
                                   b"rqplus.Queue", b"q", b""]
            assert {b"RQPLUS_CONCURRENCY=3", b"X_EXTRA=1", f"RQ_REDIS_URL={url}".encode()} <= environ
            assert os.getpgid(process.pid) == process.pid, "each child leads its own process group"
    assert RQWorker.count(connection=server.client()) == 0 and pool.processes == []


@pytest.mark.parametrize("queue_class", [("--queue-class", "rqplus.Queue"), ()], ids=["queue-class", "default"])
def test_rq_worker_pool_with_the_rqplus_worker_keeps_priority_and_retries_at_their_priority(redis, redis_server,
                                                                                            processes, queue_class):
    """`rq worker-pool -w rqplus.Worker`: rq 3.0 passes --queue-class to its workers, rq 2.12 drops it
    (its workers get a stock rq.Queue), and so does rq without the option; rqplus.Worker takes a stock
    rq.Queue as rqplus.Queue, so on both a retried job comes back at its priority, not at the tail."""
    queue = Queue("work", connection=redis)
    priorities = {"X": 0}
    for n in range(8):
        priorities[queue.enqueue("tests.jobs.record", f"p{n}", 0.2, priority=9 - n).args[0]] = 9 - n
    queue.enqueue("tests.jobs.fail", "X", priority=0, retry=Retry(max=1))  # fails twice: runs, is retried, fails
    pool = processes.start([sys.executable, "-m", "rq.cli", "worker-pool", "--url", redis_server.url,
                            "-w", "rqplus.Worker", *queue_class, "-n", "2", "--burst", "work"])
    out = processes.finish(pool)
    assert pool.returncode == 0, out
    runs = ran(redis)
    assert sorted(runs) == sorted([*priorities, "X"]), runs
    retry = runs.index("X", runs.index("X") + 1)
    assert retry <= 3, f"the retried X waited at the tail (stock rq.Queue), not at priority 0: {runs}"
    # two workers take jobs from the head of one priority-ordered list: a job may start just before
    # the one dequeued right ahead of it
    order = [priorities[tag] for tag in runs[:retry] + runs[retry + 1:]]
    assert all(order[i] <= order[i + 2] for i in range(len(order) - 2)), runs
    assert queue.failed_job_registry.count == 1 and queue.count == 0


def test_the_documented_pool_runs(redis_server, tmp_path):
    example = doc_examples(ROOT / "docs" / "workers.md", "Process pool")[0]
    redis = redis_server.client()
    redis.flushall()
    Queue("emails", connection=redis).enqueue("tests.jobs.record", "documented", priority=1)
    run_shell(example, {"redis://127.0.0.1:6379/0": redis_server.url, "--processes 4": "--processes 2 --burst"})
    assert ran(redis) == ["documented"]


@pytest.mark.parametrize("option, worker_class", [("--threads", "ThreadWorker"), ("--async", "AsyncWorker")])
def test_a_pool_of_thread_or_async_workers_runs_jobs_at_once(redis, redis_server, processes, option, worker_class):
    queue = Queue("default", connection=redis)
    jobs = [queue.enqueue("tests.jobs.record", f"j{n}", 1.0) for n in range(8)]
    pool = rqplus_worker(processes, redis_server.url, "--processes", "2", option, "4", "--burst")
    out = processes.finish(pool)
    assert pool.returncode == 0, out
    assert f"-w rqplus.{worker_class} --queue-class rqplus.Queue" in out
    assert all(job.get_status(refresh=True) == "finished" for job in jobs)
    assert overlapped(jobs), "8 jobs of 1 s on 2 processes of 4: all at once"


def test_forged_pickles_change_nothing_in_a_pool_worker(redis, redis_server, processes):
    """Issue 19 on `rqplus worker --processes 1 --threads 4`: see tests/pickles.py's
    assert_forgeries_change_nothing."""
    rqplus_worker(processes, redis_server.url, "--processes", "1", "--threads", "4", "work")
    assert_forgeries_change_nothing(redis)
