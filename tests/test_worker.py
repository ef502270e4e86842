"""rqplus/worker.py with real `rq worker` processes: priority order end to end, stock tools still work."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter

import pytest
from rq import Queue as RQQueue
from rq import Worker as RQWorker

from rqplus import Queue, Worker
from rqplus.scripts import WINDOW
from tests.conftest import subprocess_env, wait_for
from tests.jobs import RAN_KEY, WAITING_KEY, ran
from tests.pickles import assert_forgeries_change_nothing

JOB = "tests.jobs.record"


def fill(redis, name: str = "work") -> dict[str, int]:
    """Enqueue 30 jobs with shuffled priorities; return tag -> priority."""
    queue = Queue(name, connection=redis)
    priorities = {f"{p}-{n}": p for n in range(3) for p in (9, 0, 5, 3, 7, 1, 8, 2, 6, 4)}
    for tag, p in priorities.items():
        queue.enqueue(JOB, tag, priority=p)
    return priorities


def finish(processes, proc: subprocess.Popen, timeout: float = 60) -> str:
    out = processes.finish(proc, timeout)
    assert proc.returncode == 0, out
    return out


@pytest.mark.parametrize("worker_class, queue_class", [("rqplus.Worker", "rqplus.Queue"), ("rq.SimpleWorker", None),
                                                       ("rq.Worker", None)])
def test_rq_worker_cli_drains_in_priority_order(redis, redis_server, processes, worker_class, queue_class):
    """rqplus's own worker line, and stock workers with no rqplus classes at all."""
    priorities = fill(redis)
    finish(processes, processes.rq_worker(redis_server.url, "work", worker_class=worker_class, queue_class=queue_class))
    order = [priorities[tag] for tag in ran(redis)]
    assert order == sorted(order) and len(order) == 30


def test_two_workers_never_start_a_job_while_a_more_urgent_one_waits(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    priorities = {}
    for n in range(16):
        p = (n * 7) % 10
        priorities[queue.enqueue("tests.jobs.record_waiting", f"job{n}", 0.2, priority=p).args[0]] = p
    workers = [processes.rq_worker(redis_server.url, "work") for _ in range(2)]
    for proc in workers:
        finish(processes, proc)
    started = [priorities[tag] for tag in ran(redis)]
    most_urgent_waiting = [int(p) for p in redis.lrange(WAITING_KEY, 0, -1)]
    assert len(started) == 16
    for priority, waiting in zip(started, most_urgent_waiting):
        assert priority <= waiting, f"a priority {priority} job started while a priority {waiting} job waited"


def test_rq_info_and_stock_queue_see_one_queue_with_its_true_count(redis, redis_server):
    fill(redis)
    assert RQQueue("work", connection=redis).count == 30
    info = subprocess.run([sys.executable, "-m", "rq.cli", "info", "--url", redis_server.url, "--only-queues"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert info.returncode == 0, info.stderr
    assert "work" in info.stdout and "30" in info.stdout
    assert "WRONGTYPE" not in info.stdout + info.stderr


def fill_past_the_window(queue: Queue, function: str, extra: int = 200) -> dict[str, int]:
    """WINDOW + extra jobs of mixed priorities by one enqueue_many: tag -> priority."""
    rng = random.Random(5)
    priorities = {f"job{n}": rng.choice([0, 1, 4, 5, 5, 8, 9]) for n in range(WINDOW + extra)}
    queue.enqueue_many([Queue.prepare_data(function, (tag,), priority=p) for tag, p in priorities.items()])
    assert queue.connection.llen(queue.key) == WINDOW, "the run must start with a backlog"
    return priorities


def test_two_workers_take_a_backlog_most_urgent_first(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    priorities = fill_past_the_window(queue, "tests.jobs.record_waiting")
    workers = [processes.rq_worker(redis_server.url, "work") for _ in range(2)]
    for proc in workers:
        finish(processes, proc, timeout=180)
    started = [priorities[tag] for tag in ran(redis)]
    most_urgent_waiting = [int(p) for p in redis.lrange(WAITING_KEY, 0, -1)]
    assert sorted(ran(redis)) == sorted(priorities)
    late = [(n, p, w) for n, (p, w) in enumerate(zip(started, most_urgent_waiting)) if p > w]
    assert not late, f"jobs started while a more urgent one waited (index, priority, waiting): {late[:5]}"
    assert redis.exists(queue.key, queue.window_key, *queue.backlog_keys) == 0


def test_a_sigkilled_worker_draining_a_backlog_loses_nothing(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    priorities = fill_past_the_window(queue, "tests.jobs.record")
    workers = [processes.rq_worker(redis_server.url, "work", burst=False, extra=("--job-monitoring-interval", "2"))
               for _ in range(3)]
    wait_for(lambda: redis.llen(RAN_KEY) >= 300, timeout=120)
    processes.kill_group(workers[0])
    wait_for(lambda: set(ran(redis)) == set(priorities), timeout=240)
    counts = Counter(ran(redis))
    assert sum(runs > 1 for runs in counts.values()) <= 1 and max(counts.values()) <= 2, \
        "only the killed worker's own job may run twice"
    wait_for(lambda: queue.started_job_registry.count == 0, timeout=60)
    assert redis.exists(queue.key, queue.intermediate_queue_key, queue.window_key, *queue.backlog_keys) == 0


def test_rq_info_with_the_queue_class_counts_the_backlog(redis, redis_server):
    queue = Queue("deep", connection=redis)
    queue.enqueue_many([Queue.prepare_data("tests.jobs.record", (str(n),), priority=n % 10)
                        for n in range(WINDOW + 77)])
    for queue_class, expected in (("rqplus.Queue", WINDOW + 77), ("rq.Queue", WINDOW)):
        info = subprocess.run([sys.executable, "-m", "rq.cli", "info", "--url", redis_server.url, "--only-queues",
                               "--queue-class", queue_class, "deep"],
                              capture_output=True, text=True, env=subprocess_env(), timeout=60)
        assert info.returncode == 0, info.stderr
        assert f" {expected}" in info.stdout, (queue_class, info.stdout)


@pytest.mark.parametrize("worker_class", ["rqplus.Worker", "rqplus.ThreadWorker", "rqplus.AsyncWorker"])
def test_idle_worker_blocks_instead_of_polling(redis, redis_server, processes, worker_class):
    """An idle rqplus worker sits in one BLMOVE: a handful of commands in 3 s, then wakes for a new job."""
    worker = processes.rq_worker(redis_server.url, "work", burst=False, worker_class=worker_class)
    wait_for(lambda: redis.keys("rq:worker:*"), timeout=30)
    time.sleep(1)  # let start-up traffic settle
    before = redis.info("stats")["total_commands_processed"]
    time.sleep(3)
    idle_commands = redis.info("stats")["total_commands_processed"] - before
    assert idle_commands <= 10, f"{idle_commands} commands in 3 s from an idle worker"
    blmoves = redis.info("commandstats").get("cmdstat_blmove", {}).get("calls", 0)
    assert blmoves >= 1
    Queue("work", connection=redis).enqueue(JOB, "wake-up")
    wait_for(lambda: redis.llen(RAN_KEY) == 1, timeout=20)
    assert worker.poll() is None


@pytest.mark.parametrize("worker_class", ["rqplus.Worker", "rqplus.ThreadWorker", "rqplus.AsyncWorker"])
def test_strict_durability_refuses_to_start_before_writing_any_worker_key(redis, redis_server, processes, worker_class):
    proc = processes.start([sys.executable, "-m", "rq.cli", "worker", "--url", redis_server.url, "-w", worker_class,
                            "--burst", "work"], RQPLUS_DURABILITY="strict")
    out = processes.finish(proc)
    assert proc.returncode != 0
    assert "AOF is off" in out and "appendonly yes" in out
    assert redis.keys("rq:worker*") == []


@pytest.mark.parametrize("policy, logged", [("warn", True), ("off", False)])
def test_warn_logs_each_problem_and_runs_off_stays_quiet(redis, redis_server, processes, policy, logged):
    Queue("work", connection=redis).enqueue(JOB, "ran-anyway")
    proc = processes.start([sys.executable, "-m", "rq.cli", "worker", "--url", redis_server.url, "-w", "rqplus.Worker",
                            "--burst", "work"], RQPLUS_DURABILITY=policy)
    out = finish(processes, proc)
    assert ("Redis is not durable: AOF is off" in out) == logged
    assert ran(redis) == ["ran-anyway"]


def test_bad_jobs_fail_with_a_reason_and_the_worker_keeps_going(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    malformed = queue.enqueue(JOB, "malformed")
    redis.hset(malformed.key, "created_at", "not-a-date")  # RQ's dequeue would raise and the worker quit
    garbage = queue.enqueue(JOB, "garbage")
    redis.hset(garbage.key, "data", b"not a pickle")
    missing = queue.enqueue("tests.jobs.no_such_function", "missing")
    fine = queue.enqueue(JOB, "fine")
    proc = processes.rq_worker(redis_server.url, "work", "typo-queue")
    out = finish(processes, proc)
    assert "queue 'typo-queue' is unknown to Redis" in out
    assert redis.hget(malformed.key, "status") == b"failed"
    assert b"not-a-date" in redis.hget(malformed.key, "exc_info")
    assert "cannot be read" in garbage.latest_result().exc_string
    assert "no_such_function" in missing.latest_result().exc_string
    assert fine.get_status(refresh=True) == "finished" and ran(redis) == ["fine"]
    assert set(queue.failed_job_registry.get_job_ids()) == {malformed.id, garbage.id, missing.id}
    assert redis.llen(queue.intermediate_queue_key) == 0


def test_durability_is_judged_again_and_a_change_is_logged(redis_factory, caplog, monkeypatch):
    monkeypatch.setenv("RQPLUS_DURABILITY", "warn")
    client = redis_factory(appendonly="no").client()
    worker = Worker(["work"], connection=client)
    with caplog.at_level("INFO", logger="rq.worker"):
        worker.check_durability()
        client.config_set("appendonly", "yes")
        worker.check_durability()
        worker.check_durability()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Redis is not durable: AOF is off" in m for m in messages) == 1
    assert messages.count("Redis is durable again") == 1
    assert worker.durable is True


def test_jobs_keep_rqs_socket_timeout_on_the_worker_connection(redis):
    """The short idle block (rescue_interval) must not shorten the socket timeout jobs get."""
    worker = Worker(["work"], connection=redis)
    assert worker.dequeue_timeout == 5
    assert worker.connection_timeout == RQWorker(["work"], connection=redis).connection_timeout == 415


def test_a_stock_queue_class_or_queue_given_is_taken_as_an_rqplus_queue(redis):
    """RQ's CLI passes rq.Queue without --queue-class, and `rq worker-pool` of rq 2.12 always does
    (tests/test_pool.py runs it): the worker still fetches, retries and rescues with rqplus.Queue."""
    class Custom(Queue):
        pass

    worker = Worker([RQQueue("a", connection=redis), Custom("b", connection=redis), "c"], connection=redis,
                    queue_class=RQQueue)
    assert worker.queue_class is Queue
    assert [(type(queue), queue.name) for queue in worker.queues] == [(Queue, "a"), (Custom, "b"), (Queue, "c")]
    assert worker._ordered_queues == worker.queues and worker.queues[0].job_class is worker.job_class
    assert Worker(["a"], connection=redis, queue_class=Custom).queue_class is Custom


def test_forged_pickles_change_nothing_in_the_worker_that_reads_them(redis, redis_server, processes):
    """Issue 19: forged meta, arguments and instances (BUILD, SETITEMS, APPENDS, __setstate__ on
    classes and objects that exist before the load) fail with the reason, and a later job of the
    same `rq worker -w rqplus.Worker` sees every class and object as they were."""
    processes.rq_worker(redis_server.url, "work", burst=False)
    assert_forgeries_change_nothing(redis)
