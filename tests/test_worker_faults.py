"""Faults around running workers, with real `rq worker` processes and private redis-servers (AOF on).

1. Redis crashes (SIGKILL) and restarts on the same port and data directory while workers block
   or run: workers reconnect with backoff and carry on; nothing acknowledged is lost.
2. SIGTERM: warm shutdown lets the running job finish and leaves the rest queued; a second
   SIGTERM (cold shutdown: RQ kills the work-horse) must not orphan the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from rq.job import Job

from rqplus import Queue
from rqplus.embedded import DURABLE_CONFIG, RedisServer
from rqplus.recovery import alive_key, marker_key
from tests.conftest import Processes, wait_for

JOB = "tests.jobs.count_run"
#: Seconds a test waits for an outcome (every wait is bounded).
BOUND = 60


def runs(redis, tag: str) -> int:
    return int(redis.hget("test:runs", tag) or 0)


def durable_server(redis_factory) -> RedisServer:
    server = redis_factory(**DURABLE_CONFIG)
    assert server.client().config_get("appendonly") == {"appendonly": "yes"}
    return server


def crash_and_restart(server: RedisServer, down: float = 2.0) -> float:
    """SIGKILL redis-server, start it again on the same port and data dir ``down`` s later; return when it answered."""
    port = server.port
    server.kill()
    time.sleep(down)
    server.start()
    assert server.port == port
    return time.monotonic()


def leftovers(redis, queue: Queue) -> tuple[int, int, int]:
    """Queued, in the intermediate list, in the started registry (ZCARD: `.count` would run RQ's cleanup)."""
    return redis.llen(queue.key), redis.llen(queue.intermediate_queue_key), redis.zcard(queue.started_job_registry.key)


def listening(processes: Processes, proc: subprocess.Popen, queues: tuple[str, ...]) -> None:
    """Wait until ``proc`` is in its work loop (bootstrap done: a crash at start-up is another matter)."""
    wait_for(lambda: f"cleaning registries for queue: {queues[-1]}" in processes.output(proc), timeout=30)
    time.sleep(0.3)


def tail(processes: Processes, proc: subprocess.Popen, lines: int = 25) -> str:
    """The end of a worker's output; for a crash, the gist: the rq/rqplus frames and the last error."""
    out = processes.output(proc).splitlines()
    if "found an unhandled exception" not in processes.output(proc):
        return "\n".join(out[-lines:])
    start = next(i for i, line in enumerate(out) if "found an unhandled exception" in line)
    frames = [line.strip() for line in out[start:] if "/site-packages/rq/" in line or "/rqplus/" in line]
    errors = [line for line in out[start:] if line.startswith("redis.exceptions.")]
    return "\n".join([out[start], *frames, *errors[-1:]])


# --- 1. Redis crash and restart (AOF on) -------------------------------------------------------


def test_idle_workers_reconnect_after_redis_crash_and_restart(redis_factory, processes):
    """(a) A single-queue worker (blocking BLMOVE) and a multi-queue worker (blocking BLPOP on wake lists)."""
    server = durable_server(redis_factory)
    redis = server.client()
    layouts = {"single": ("solo",), "multi": ("m1", "m2")}
    workers = {kind: processes.rq_worker(server.url, *queues, burst=False) for kind, queues in layouts.items()}
    for kind, proc in workers.items():
        listening(processes, proc, layouts[kind])
    time.sleep(1)  # both blocked in Redis now

    restarted = crash_and_restart(server, down=2)
    queues = {name: Queue(name, connection=redis) for name in ("solo", "m1", "m2")}
    jobs = {name: q.enqueue(JOB, name) for name, q in queues.items()}
    wait_for(lambda: all(j.get_status(refresh=True) == "finished" for j in jobs.values()), timeout=BOUND,
             interval=0.1)
    print(f"jobs enqueued after the restart finished {time.monotonic() - restarted:.1f} s after it")

    for kind, proc in workers.items():
        assert proc.poll() is None, f"{kind} worker exited:\n{tail(processes, proc)}"
        assert "could not connect to Redis instance" in processes.output(proc), "the outage went unnoticed?"
    assert all(runs(redis, name) == 1 for name in queues)
    assert all(leftovers(redis, q) == (0, 0, 0) for q in queues.values())
    # and they keep heartbeating: their liveness keys are back after the restart
    assert redis.scard("rq:workers") == 2
    assert len(redis.keys("rqplus:worker:*:alive")) == 2


def test_acknowledged_jobs_survive_redis_crash_and_run_exactly_once(redis_factory, processes):
    """(b) Every enqueue that returned is in the AOF (written before the reply), so a SIGKILL right after loses nothing."""
    server = durable_server(redis_factory)
    redis = server.client()
    queues = {name: Queue(name, connection=redis) for name in ("payments", "emails", "logs")}
    tags = []
    for n in range(30):
        name = list(queues)[n % 3]
        tags.append(f"{name}-{n}")
        queues[name].enqueue(JOB, tags[-1], priority=(n * 7) % 10)
    before = {name: redis.lrange(q.key, 0, -1) for name, q in queues.items()}

    crash_and_restart(server, down=2)  # at once: no time for an fsync on purpose
    assert {name: redis.lrange(q.key, 0, -1) for name, q in queues.items()} == before, "queues changed"
    for name, ids in before.items():
        for job_id in ids:
            assert Job.fetch(job_id.decode(), connection=redis).get_status() == "queued"

    layouts = [("payments",), ("emails", "logs"), ("logs", "payments")]
    for layout in layouts:
        processes.rq_worker(server.url, *layout, burst=False)
    wait_for(lambda: all(runs(redis, tag) for tag in tags) and not any(sum(leftovers(redis, q))
                                                                        for q in queues.values()),
             timeout=BOUND, interval=0.2)
    assert {tag: runs(redis, tag) for tag in tags} == {tag: 1 for tag in tags}
    assert sum(len(q.finished_job_registry.get_job_ids()) for q in queues.values()) == len(tags)


RUNNING_CASES = {
    # job_seconds, down, job monitoring interval (None: RQ's 30 s): when does the worker touch Redis?
    "job-outlives-the-outage": (4, 2, None),  # no monitoring tick during the outage: the job ends after the restart
    "monitoring-tick-in-the-outage": (4, 2, "1"),  # a heartbeat falls in the outage (any job running > 30 s)
    "job-ends-in-the-outage": (2, 4, "5"),  # the horse ends (and reports) while Redis is down
}


@pytest.mark.parametrize("job_seconds, down, monitoring", RUNNING_CASES.values(), ids=RUNNING_CASES.keys())
def test_job_running_across_a_redis_restart_is_not_lost_and_its_worker_carries_on(
        redis_factory, processes, job_seconds, down, monitoring):
    """(c) The job ends FINISHED (once, or again after a rescue), never lost or STARTED forever; the worker lives on."""
    server = durable_server(redis_factory)
    redis = server.client()
    queue = Queue("work", connection=redis)
    job = queue.enqueue(JOB, "long", job_seconds)
    behind = queue.enqueue(JOB, "behind")
    extra = ("--job-monitoring-interval", monitoring) if monitoring else ()
    env = {"RQPLUS_RESCUE_INTERVAL": "1"}
    worker = processes.rq_worker(server.url, "work", burst=False, extra=extra, env=env)
    wait_for(lambda: runs(redis, "long") == 1, timeout=30)
    # a second, idle rqplus worker on the queue: the one that would rescue the job if needed
    rescuer = processes.rq_worker(server.url, "work", "spare", burst=False, extra=extra, env=env)
    listening(processes, rescuer, ("work", "spare"))
    assert job.get_status(refresh=True) == "started" and worker.poll() is None

    restarted = crash_and_restart(server, down)

    def settled() -> bool:
        return job.get_status(refresh=True) == "finished" and behind.get_status(refresh=True) == "finished"

    try:
        wait_for(settled, timeout=BOUND, interval=0.2)
    except AssertionError:
        raise AssertionError(f"job {job.get_status(refresh=True)}, behind {behind.get_status(refresh=True)}, "
                             f"queued/intermediate/started {leftovers(redis, queue)}; worker exit "
                             f"{worker.poll()}:\n{tail(processes, worker)}") from None
    rescues = int(redis.hget(job.key, "rescues") or 0)
    print(f"{time.monotonic() - restarted:.1f} s after the restart: long ran {runs(redis, 'long')} time(s) "
          f"(rescues {rescues}), worker exit code {worker.poll()}, rescuer exit code {rescuer.poll()}")
    assert runs(redis, "long") == 1 + rescues, "a second run only through a rescue"
    assert runs(redis, "behind") == 1
    assert leftovers(redis, queue) == (0, 0, 0)
    assert rescuer.poll() is None, f"the idle worker exited:\n{tail(processes, rescuer)}"
    # the requirement: "workers reconnect with backoff and carry on"
    assert worker.poll() is None, f"the busy worker exited on the outage:\n{tail(processes, worker)}"


# --- 2. SIGTERM: warm and cold shutdown --------------------------------------------------------


@pytest.mark.parametrize("layout", [("work",), ("work", "other")], ids=["single-queue", "multi-queue"])
def test_sigterm_lets_the_running_job_finish_and_leaves_the_rest_queued(redis_factory, processes, layout):
    server = durable_server(redis_factory)
    redis = server.client()
    queues = {name: Queue(name, connection=redis) for name in layout}
    queue = queues["work"]
    job = queue.enqueue(JOB, "long", 2)
    behind = [q.enqueue(JOB, f"behind-{name}-{n}") for name, q in queues.items() for n in range(3)]
    worker = processes.rq_worker(server.url, *layout, burst=False)
    wait_for(lambda: runs(redis, "long") == 1, timeout=30)
    waiting = {name: redis.lrange(q.key, 0, -1) for name, q in queues.items()}
    assert sum(map(len, waiting.values())) == len(behind)

    os.kill(worker.pid, signal.SIGTERM)  # the worker only: RQ's warm shutdown
    sent = time.monotonic()
    assert worker.wait(BOUND) == 0, tail(processes, worker)
    print(f"{'/'.join(layout)} worker exited {time.monotonic() - sent:.1f} s after SIGTERM")
    assert "warm shut down requested" in processes.output(worker)

    assert job.get_status(refresh=True) == "finished"
    assert runs(redis, "long") == 1
    for name, q in queues.items():
        assert redis.zcard(q.started_job_registry.key) == 0, f"{name}: entry left in the started registry"
        assert redis.llen(q.intermediate_queue_key) == 0, f"{name}: id left in the intermediate list"
        assert redis.lrange(q.key, 0, -1) == waiting[name], f"{name}: queued jobs were taken"
    assert all(j.get_status(refresh=True) == "queued" for j in behind)
    assert not any(runs(redis, j.args[0]) for j in behind)
    assert redis.keys("rqplus:worker:*") == [], "a clean stop drops the liveness keys"


def test_sigterm_stops_idle_blocking_workers_at_once(redis_factory, processes):
    server = durable_server(redis_factory)
    redis = server.client()
    layouts = [("solo",), ("m1", "m2")]
    workers = [processes.rq_worker(server.url, *layout, burst=False) for layout in layouts]
    for proc, layout in zip(workers, layouts):
        listening(processes, proc, layout)
    time.sleep(1)
    sent = time.monotonic()
    for proc in workers:
        os.kill(proc.pid, signal.SIGTERM)
    for proc in workers:
        assert proc.wait(BOUND) == 0, tail(processes, proc)
    print(f"idle workers exited {time.monotonic() - sent:.1f} s after SIGTERM")
    assert redis.scard("rq:workers") == 0
    for name in ("solo", "m1", "m2"):
        assert leftovers(redis, Queue(name, connection=redis)) == (0, 0, 0)


def test_cold_shutdown_does_not_orphan_the_running_job(redis_factory, processes):
    """SIGTERM twice: RQ kills the horse. The job must go back to its queue (or be rescued) or fail with a reason."""
    server = durable_server(redis_factory)
    redis = server.client()
    queue = Queue("work", connection=redis)
    job = queue.enqueue(JOB, "long", 3)
    monitoring = 5
    extra = ("--job-monitoring-interval", str(monitoring))
    env = {"RQPLUS_RESCUE_INTERVAL": "1"}
    worker = processes.rq_worker(server.url, "work", burst=False, extra=extra, env=env)
    wait_for(lambda: runs(redis, "long") == 1, timeout=30)
    worker_name = redis.hget(job.key, "worker_name").decode()

    os.kill(worker.pid, signal.SIGTERM)
    time.sleep(1.2)  # RQ ignores a second signal within 1 s of the first
    os.kill(worker.pid, signal.SIGTERM)
    exit_code = worker.wait(BOUND)
    assert "cold shut down" in processes.output(worker)
    print(f"cold shutdown: worker exit code {exit_code}; job {job.get_status(refresh=True)}, "
          f"queued/intermediate/started {leftovers(redis, queue)}, liveness marker kept: "
          f"{bool(redis.exists(marker_key(worker_name)))}, alive key kept: {bool(redis.exists(alive_key(worker_name)))}")

    # another live rqplus worker: it must get the job back within job_monitoring_interval + 15 s
    processes.rq_worker(server.url, "work", burst=False, extra=extra, env=env)
    stopped = time.monotonic()
    try:
        wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed"), timeout=monitoring + 15, interval=0.2)
    except AssertionError:
        raise AssertionError(
            f"job orphaned: still {job.get_status(refresh=True)} {monitoring + 15} s after the cold shutdown, "
            f"queued/intermediate/started {leftovers(redis, queue)}, dead worker's rqplus marker "
            f"{'present' if redis.exists(marker_key(worker_name)) else 'deleted'}") from None
    print(f"job {job.get_status(refresh=True)} {time.monotonic() - stopped:.1f} s after the cold shutdown")
    assert leftovers(redis, queue) == (0, 0, 0)
    if job.get_status(refresh=True) == "failed":
        assert job.latest_result().exc_string, "a failed job says why"
    else:
        assert runs(redis, "long") == 2
