"""Faults around running workers, with real `rq worker` processes and private redis-servers (AOF on).

1. Redis crashes (SIGKILL) and restarts on the same port and data directory while workers block
   or run: workers reconnect with backoff and carry on; nothing acknowledged is lost.
2. SIGTERM: warm shutdown lets the running job finish and leaves the rest queued; a second
   SIGTERM (cold shutdown: RQ kills the work-horse) must not orphan the job.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter

import pytest
from redis.exceptions import RedisError
from rq.job import Job

from rqplus import Queue
from rqplus.embedded import DURABLE_CONFIG, RedisServer
from rqplus.recovery import alive_key, marker_key
from tests.conftest import Processes, wait_for
from tests.jobs import RUNS_FILE_ENV

JOB = "tests.jobs.count_run"
#: A job that counts its runs in a file, not in Redis (see tests.jobs.note_run).
NOTE = "tests.jobs.note_run"
MONITORING = ("--job-monitoring-interval", "5")
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


def started_entries(redis, queues: list[Queue], processes: Processes, workers: list[subprocess.Popen]) -> str:
    """What each entry left in a started registry is: its execution hash, its job's hash and results,
    and every line the workers logged about the job (for a failure message)."""
    found = []
    for queue in queues:
        for entry, score in redis.zrange(queue.started_job_registry.key, 0, -1, withscores=True):
            entry = entry.decode()
            job_id = entry.rpartition(":")[0] or entry
            job = {k.decode(): v.decode(errors="replace")[:60] for k, v in redis.hgetall(f"rq:job:{job_id}").items()
                   if k not in (b"data", b"exc_info")}
            results = [{k.decode(): v.decode(errors="replace")[:40] for k, v in fields.items() if k != b"return_value"}
                       for _, fields in redis.xrange(f"rq:results:{job_id}")]
            found.append(f"{queue.started_job_registry.key} {entry} (expires in {score - time.time():.0f} s): "
                         f"execution {redis.hgetall(f'rq:execution:{entry}')}, executions of the job "
                         f"{redis.zrange(f'rq:executions:{job_id}', 0, -1)}, job {job}, results {results}")
            found += [f"  worker {n}: {line}" for n, proc in enumerate(workers)
                      for line in processes.output(proc).splitlines() if job_id in line]
    return "\n".join(found)


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


# --- 3. Repeated Redis crashes under load --------------------------------------------------------


class Producer(threading.Thread):
    """Enqueues ``note_run`` jobs until stopped; records which enqueues returned (acknowledged)."""

    def __init__(self, server: RedisServer, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.queues = [Queue(name, connection=server.client()) for name in ("work", "work", "other")]
        self.rng = rng
        self.acknowledged: list[str] = []
        self.refused: list[str] = []  # enqueues that raised: written or not, nobody knows
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            tag = f"job-{n}"
            seconds = 2.0 if n % 15 == 0 else self.rng.choice([0.0, 0.05, 0.2])  # some span an outage
            try:
                self.rng.choice(self.queues).enqueue(NOTE, tag, seconds, priority=n % 10)
                self.acknowledged.append(tag)
            except RedisError:
                self.refused.append(tag)
            time.sleep(0.04)


def test_workers_survive_repeated_redis_crashes_and_run_acknowledged_jobs_once(redis_factory, processes, tmp_path):
    """SIGKILL redis-server >= 5 times (down 1-8 s) under 2 busy workers and a producer."""
    server = redis_factory(**{**DURABLE_CONFIG, "appendfsync": "always"})
    redis = server.client()
    runs_file = tmp_path / "runs.txt"
    runs_file.touch()
    env = {RUNS_FILE_ENV: str(runs_file)}
    layouts = [("work",), ("work", "other")]  # the single-queue BLMOVE and the multi-queue fetch
    workers = []
    for layout in layouts:  # one at a time: a worker skips, unlogged, a queue another one is cleaning at start-up
        workers.append(processes.rq_worker(server.url, *layout, burst=False, extra=MONITORING, env=env))
        listening(processes, workers[-1], layout)
    rng = random.Random(10)
    producer = Producer(server, rng)
    producer.start()
    outages = [1, 8, 2, 4, 3]
    for down in outages:
        time.sleep(rng.uniform(2, 3))
        crash_and_restart(server, down)
    time.sleep(2)
    producer.stopping.set()
    producer.join(BOUND)
    queues = [Queue(name, connection=redis) for name in ("work", "other")]

    def ran() -> Counter:
        return Counter(runs_file.read_text().split())

    def failed() -> dict[str, str]:
        """Failed jobs and their last error line (a Redis fault must fail none: each is waited out)."""
        found = [Job.fetch_many(q.failed_job_registry.get_job_ids(), connection=redis) for q in queues]
        return {job.args[0]: job.latest_result().exc_string.strip().splitlines()[-1]
                for jobs in found for job in jobs if job is not None}

    def drained() -> bool:
        waiting = set(producer.acknowledged) - set(ran()) - set(failed())
        return not any(sum(leftovers(redis, q)) for q in queues) and not waiting

    try:
        wait_for(drained, timeout=BOUND, interval=0.5)
    except AssertionError:
        missing = [t for t in producer.acknowledged if not ran()[t]]
        raise AssertionError(f"never ran: {missing[:10]} ({len(missing)}); queued/intermediate/started: "
                             f"{[leftovers(redis, q) for q in queues]}\n"
                             f"{started_entries(redis, queues, processes, workers)}") from None
    for proc in workers:
        assert proc.poll() is None, f"a worker exited:\n{tail(processes, proc)}"

    finished = [Job.fetch_many(q.finished_job_registry.get_job_ids(), connection=redis) for q in queues]
    jobs = {job.args[0]: job for found in finished for job in found if job is not None}
    twice = {tag: int(redis.hget(jobs[tag].key, "rescues") or 0) for tag, count in ran().items() if count > 1}
    waits = sum(processes.output(proc).count("Redis serves again") for proc in workers)
    print(f"{len(outages)} Redis crashes (down {sum(outages)} s in all), {len(producer.acknowledged)} jobs "
          f"acknowledged, {len(producer.refused)} enqueues raised; {waits} waits for Redis ended in the workers "
          f"and their work-horses; {len(twice)} ran twice: {twice}")
    assert not failed(), f"no job failed by a Redis fault: {failed()}"
    assert set(producer.acknowledged) <= set(jobs), "every acknowledged job ends FINISHED"
    assert all(rescues >= 1 for rescues in twice.values()), "a second run only for a job handed back or rescued"
    assert max(ran().values()) <= 2
    assert not twice, "no job ran twice: each outcome was kept and written once Redis was back"
    for tag in producer.refused:  # written or not, never doubled
        assert ran()[tag] <= 1

    for proc in workers:  # an operator's stop still stops
        os.kill(proc.pid, signal.SIGTERM)
    for proc in workers:
        assert proc.wait(BOUND) == 0, tail(processes, proc)


# --- 4. Redis out of memory (maxmemory, noeviction) ---------------------------------------------


def test_workers_pause_while_redis_is_out_of_memory_and_drain_when_it_is_raised(redis_factory, processes, tmp_path):
    server = durable_server(redis_factory)
    redis = server.client()
    runs_file = tmp_path / "runs.txt"
    runs_file.touch()
    env = {RUNS_FILE_ENV: str(runs_file)}
    running = processes.rq_worker(server.url, "work", burst=False, extra=MONITORING, env=env)
    listening(processes, running, ("work",))  # one at a time, as above
    late = processes.rq_worker(server.url, "other", "work", burst=False, extra=MONITORING, env=env)
    listening(processes, late, ("other", "work"))
    queue = Queue("work", connection=redis)
    queue.enqueue(NOTE, "job-0", 3)
    Queue("other", connection=redis).enqueue(NOTE, "job-1", 3)
    wait_for(lambda: {"job-0", "job-1"} <= set(runs_file.read_text().split()), timeout=30)  # both busy
    tags = ["job-0", "job-1"] + [queue.enqueue(NOTE, f"job-{n}", 0.05).args[0] for n in range(2, 40)]
    # below what Redis holds already: every write is refused from now on (reads and PING still work)
    redis.config_set("maxmemory", int(redis.info("memory")["used_memory"]) // 2)
    wait_for(lambda: "out of memory" in processes.output(running) and "out of memory" in processes.output(late),
             timeout=BOUND)
    time.sleep(3)  # a few more beats, fetches and the end of job-0, all refused
    assert running.poll() is None and late.poll() is None, f"{tail(processes, running)}\n{tail(processes, late)}"
    paused = runs_file.read_text().split()

    redis.config_set("maxmemory", 0)
    wait_for(lambda: set(runs_file.read_text().split()) == set(tags) and not sum(leftovers(redis, queue))
             and not redis.zcard(Queue("other", connection=redis).started_job_registry.key),
             timeout=BOUND, interval=0.2)
    ran = Counter(runs_file.read_text().split())
    logged = [processes.output(proc).count("Redis is out of memory") for proc in (running, late)]
    print(f"{len(paused)} of {len(tags)} jobs had started when Redis filled up; each ran {set(ran.values())} "
          f"time(s); out-of-memory lines logged per worker: {logged}")
    assert running.poll() is None and late.poll() is None
    assert set(ran.values()) == {1}
    queues = (queue, Queue("other", connection=redis))
    assert sum(q.failed_job_registry.count for q in queues) == 0, "no job failed (nor both failed and finished)"
    assert sum(len(q.finished_job_registry.get_job_ids()) for q in queues) == len(tags)
    assert all("raise maxmemory" in processes.output(proc) for proc in (running, late)), "the fix is named"


#: A read-only script that keeps Redis busy for ARGV[1] seconds (Redis answers BUSY to everyone else
#: after busy-reply-threshold); a test sends it as the default user, which may EVAL.
BUSY_FOR = """
local start = tonumber(redis.call('TIME')[1])
while tonumber(redis.call('TIME')[1]) - start < tonumber(ARGV[1]) do end
return 1
"""


@pytest.mark.parametrize("worker_class", ["rqplus.Worker", "rqplus.ThreadWorker"])
def test_workers_wait_out_a_busy_script_and_record_the_job_that_ended_meanwhile(redis_factory, processes, tmp_path,
                                                                                 worker_class):
    server = redis_factory(busy_reply_threshold=100)
    redis = server.client()
    runs_file = tmp_path / "runs.txt"
    runs_file.touch()
    worker = processes.rq_worker(server.url, "busy", burst=False, worker_class=worker_class,
                                 env={RUNS_FILE_ENV: str(runs_file)})
    listening(processes, worker, ("busy",))
    queue = Queue("busy", connection=redis)
    during = queue.enqueue(NOTE, "during", 1)
    wait_for(lambda: "during" in runs_file.read_text(), timeout=BOUND)
    server.client().eval(BUSY_FOR, 0, 4)  # the job ends, and its worker beats, while Redis answers BUSY
    after = queue.enqueue(NOTE, "after", 0)
    wait_for(lambda: after.get_status(refresh=True) == "finished", timeout=BOUND)
    assert worker.poll() is None, tail(processes, worker)
    assert during.get_status(refresh=True) == "finished"
    assert runs_file.read_text().split() == ["during", "after"]
    assert "busy running a script" in processes.output(worker)


# --- 5. Corrupt data ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [("gs",), ("gs", "other")], ids=["single-queue", "multi-queue"])
def test_a_queue_entry_that_is_no_job_hash_is_quarantined_and_the_queue_goes_on(redis, redis_server, processes,
                                                                                layout):
    redis.set("rq:job:x", "s")
    redis.rpush("rq:queue:gs", "x")
    queue = Queue("gs", connection=redis)
    valid = [queue.enqueue(JOB, f"valid-{n}") for n in range(3)]  # the insert reads past the bad entry
    timed = queue.enqueue(JOB, "bad-timeout")
    redis.hset(timed.key, "timeout", "abc")
    worker = processes.rq_worker(redis_server.url, *layout)
    assert worker.wait(BOUND) == 0, tail(processes, worker)  # a burst worker that drained its queues

    assert all(job.get_status(refresh=True) == "finished" for job in valid)
    assert set(queue.failed_job_registry.get_job_ids()) == {"x", timed.id}
    assert redis.get("rqplus:corrupt:x") == b"s", "the bad value is kept aside for inspection"
    assert "holds a string, not a job hash" in redis.hget("rq:job:x", "exc_info").decode()
    assert "field 'timeout'" in redis.hget(timed.key, "exc_info").decode()
    assert leftovers(redis, queue) == (0, 0, 0)


def test_a_job_hash_without_data_fails_with_a_reason_naming_the_field(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    job = queue.enqueue(JOB, "no-data")
    redis.hdel(job.key, "data")
    behind = queue.enqueue(JOB, "behind")
    worker = processes.rq_worker(redis_server.url, "work", burst=False, env={"RQPLUS_RESCUE_INTERVAL": "1"})
    # RQ's fetch skips the id and leaves it in the intermediate list; the rescue pass quarantines it
    wait_for(lambda: job.id.encode() in redis.zrange(queue.failed_job_registry.key, 0, -1), timeout=BOUND)
    assert "field 'data'" in redis.hget(job.key, "exc_info").decode()
    assert behind.get_status(refresh=True) == "finished"
    assert leftovers(redis, queue) == (0, 0, 0)
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(BOUND) == 0, tail(processes, worker)


def test_a_worker_that_quits_on_an_unexpected_error_exits_non_zero(redis, redis_server, processes):
    redis.set("rq:queue:broken", "not a list")  # every fetch fails with WRONGTYPE
    worker = processes.rq_worker(redis_server.url, "broken", burst=False)
    assert worker.wait(BOUND) == 1
    assert "WRONGTYPE" in processes.output(worker) and "unexpected error" in processes.output(worker)
