"""rqplus.ThreadWorker (and, where the behaviour lives in thread_worker.py, AsyncWorker): jobs at once,
priority order, timeouts, the allow-list, crashes and stops, against a real Redis and real processes."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import zlib
from collections import Counter

import pytest
from rq import Queue as RQQueue
from rq import Callback, Retry, SimpleWorker
from rq.command import send_stop_job_command
from rq.results import Result

from rqplus import AsyncWorker, Queue, ThreadWorker
from rqplus.dashboard.metrics import workers
from tests.conftest import overlapped, wait_for
from tests.jobs import REDIS_URL_ENV, WAITING_KEY, ran
from tests.pickles import assert_forgeries_change_nothing

CLASSES = {"rqplus.ThreadWorker": "tests.jobs.slow_first_run", "rqplus.AsyncWorker": "tests.jobs.sleep_async_first_run"}


def test_rq_worker_cli_runs_n_jobs_at_once(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    jobs = [queue.enqueue("tests.jobs.record", f"t{n}", 1.0) for n in range(8)]
    proc = processes.rq_worker(redis_server.url, "work", worker_class="rqplus.ThreadWorker",
                               env={"RQPLUS_CONCURRENCY": "8"})
    out = processes.finish(proc, 60)
    assert proc.returncode == 0, out
    assert all(job.get_status(refresh=True) == "finished" for job in jobs)
    assert overlapped(jobs)
    assert [job.return_value() for job in jobs] == [f"t{n}" for n in range(8)]


def test_no_job_starts_while_a_more_urgent_one_waits(redis):
    queue = Queue("work", connection=redis)
    priorities = {}
    for n in range(24):
        p = (n * 7) % 10
        priorities[queue.enqueue("tests.jobs.record_waiting", f"job{n}", 0.1, priority=p).args[0]] = p
    ThreadWorker([queue], connection=redis, concurrency=3).work(burst=True)
    started = [priorities[tag] for tag in ran(redis)]
    waiting = [int(p) for p in redis.lrange(WAITING_KEY, 0, -1)]
    assert len(started) == 24
    for priority, most_urgent in zip(started, waiting):
        assert priority <= most_urgent, f"a priority {priority} job started while a priority {most_urgent} job waited"


def test_a_job_past_its_timeout_is_stopped_or_abandoned_and_its_siblings_finish(redis):
    queue = Queue("work", connection=redis)
    spinning = queue.enqueue("tests.jobs.spin", 30, job_timeout=1)
    sleeping = queue.enqueue("tests.jobs.record", "asleep", 30, job_timeout=1)  # blocked in C: abandoned
    siblings = [queue.enqueue("tests.jobs.record", f"s{n}", 2.0) for n in range(3)]
    worker = ThreadWorker([queue], connection=redis, concurrency=5)
    worker.abandon_grace = 1
    worker.watchdog.grace = 1
    worker.work(burst=True)
    assert spinning.get_status(refresh=True) == "failed"
    assert "JobTimeoutException" in spinning.latest_result().exc_string
    assert "abandoned" not in spinning.latest_result().exc_string
    assert sleeping.get_status(refresh=True) == "failed"
    assert "abandoned" in sleeping.latest_result().exc_string
    assert all(job.get_status(refresh=True) == "finished" for job in siblings)
    assert queue.started_job_registry.count == 0


class Evil:
    """A pickle that would run a shell command when loaded."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("worker_class", [ThreadWorker, AsyncWorker])
def test_the_allow_list_and_the_safe_unpickler_refuse_forged_jobs(redis, tmp_path, worker_class):
    target = tmp_path / "pwned"
    walked = RQQueue("work", connection=redis).enqueue("tests.jobs.os.system", f"touch {target}")
    reexported = RQQueue("work", connection=redis).enqueue("tests.jobs.reexported")
    pickled = Queue("work", connection=redis).enqueue("tests.jobs.record", "forged")
    redis.hset(pickled.key, "data", zlib.compress(pickle.dumps(("tests.jobs.record", None, (Evil(f"touch {target}"),), {}))))
    not_a_hash = Queue("work", connection=redis).enqueue("tests.jobs.record", "not-a-hash")
    redis.delete(not_a_hash.key)
    redis.rpush(not_a_hash.key, "forged")  # a job key of another type: RQ's dequeue would raise
    fine = Queue("work", connection=redis).enqueue("tests.jobs.record", "fine")
    worker_class([Queue("work", connection=redis)], connection=redis, concurrency=4).work(burst=True)
    for job in (walked, reexported):
        assert job.get_status(refresh=True) == "failed"
        assert "allow" in job.latest_result().exc_string.lower()
    assert pickled.get_status(refresh=True) == "failed" and "cannot be read" in pickled.latest_result().exc_string
    assert redis.hget(not_a_hash.key, "status") == b"failed" and b"holds a list" in redis.hget(not_a_hash.key, "exc_info")
    assert not target.exists() and ran(redis) == ["fine"] and fine.get_status(refresh=True) == "finished"


@pytest.mark.parametrize("worker_class", CLASSES)
def test_a_sigkilled_worker_with_50_jobs_in_flight_loses_none(redis, redis_server, processes, worker_class):
    queue = Queue("work", connection=redis)
    jobs = [queue.enqueue(CLASSES[worker_class], f"j{n}", 60) for n in range(50)]
    env = {"RQPLUS_CONCURRENCY": "50", "RQPLUS_RESCUE_INTERVAL": "1", REDIS_URL_ENV: redis_server.url}
    busy = processes.rq_worker(redis_server.url, "work", worker_class=worker_class, burst=False,
                               extra=("--job-monitoring-interval", "2"), env=env)
    wait_for(lambda: len(ran(redis)) == 50, timeout=60)  # all 50 in their functions
    processes.kill_group(busy)
    rescuer = processes.rq_worker(redis_server.url, "work", worker_class=worker_class, burst=False,
                                  extra=("--job-monitoring-interval", "2"), env=env)  # waits 12 s on a new Redis
    wait_for(lambda: all(job.get_status(refresh=True) == "finished" for job in jobs), timeout=90)
    runs = Counter(ran(redis))
    assert runs == Counter({f"j{n}": 2 for n in range(50)}), "each ran once, killed, and once again after its rescue"
    assert rescuer.poll() is None and queue.started_job_registry.count == 0


@pytest.mark.parametrize("worker_class", CLASSES)
def test_sigterm_lets_running_jobs_finish_and_starts_no_more(redis, redis_server, processes, worker_class):
    queue = Queue("work", connection=redis)
    running = [queue.enqueue(CLASSES[worker_class], f"r{n}", 2) for n in range(4)]
    proc = processes.rq_worker(redis_server.url, "work", worker_class=worker_class, burst=False,
                               env={"RQPLUS_CONCURRENCY": "4", REDIS_URL_ENV: redis_server.url})
    wait_for(lambda: len(ran(redis)) == 4, timeout=60)
    [shown] = workers(redis)  # the dashboard's workers table
    assert shown.kind.endswith(worker_class.split(".")[-1]) and shown.concurrency == 4
    assert sorted(job.id for job in shown.running) == sorted(job.id for job in running)
    waiting = queue.enqueue("tests.jobs.record", "waiting")
    proc.send_signal(signal.SIGTERM)
    out = processes.finish(proc, 60)
    assert proc.returncode == 0, out
    assert all(job.get_status(refresh=True) == "finished" for job in running)
    assert waiting.get_status(refresh=True) == "queued" and queue.get_job_ids() == [waiting.id]


def test_a_second_signal_hands_running_jobs_back(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    jobs = [queue.enqueue("tests.jobs.slow_first_run", f"h{n}", 60) for n in range(4)]
    proc = processes.rq_worker(redis_server.url, "work", worker_class="rqplus.ThreadWorker", burst=False,
                               env={"RQPLUS_CONCURRENCY": "4"})
    wait_for(lambda: len(ran(redis)) == 4, timeout=60)
    proc.send_signal(signal.SIGTERM)
    threading.Event().wait(1.5)  # RQ ignores a second signal within 1 s of the first
    proc.send_signal(signal.SIGTERM)
    processes.finish(proc, 30)
    assert sorted(queue.get_job_ids()) == sorted(job.id for job in jobs)
    assert all(job.get_status(refresh=True) == "queued" for job in jobs)
    assert queue.started_job_registry.count == 0
    assert [redis.hget(job.key, "rescues") for job in jobs] == [b"1"] * 4


def test_concurrency_must_be_a_whole_number_of_at_least_one(redis, monkeypatch):
    with pytest.raises(ValueError, match="concurrency"):
        ThreadWorker(["work"], connection=redis, concurrency=0)
    monkeypatch.setenv("RQPLUS_CONCURRENCY", "many")
    with pytest.raises(ValueError, match="'many'"):
        ThreadWorker(["work"], connection=redis)
    monkeypatch.setenv("RQPLUS_CONCURRENCY", "12")
    assert ThreadWorker(["work"], connection=redis).concurrency == 12


def test_batched_bookkeeping_writes_what_rqs_own_steps_write(redis):
    """The same job run by stock RQ (its own start and end steps) and by a ThreadWorker (START_MANY
    and FINISH_MANY): the same fields, registries and keys, while it runs and once it is done."""
    queue = Queue("work", connection=redis)
    outcomes = {}
    for name, worker_class in (("rq", SimpleWorker), ("rqplus", ThreadWorker)):
        job = queue.enqueue("tests.jobs.snapshot", result_ttl=600)
        redis.sadd("test:jobs", job.id)
        worker = worker_class([queue], connection=redis, name=f"{name}-worker")
        worker.work(burst=True)
        job.refresh()
        [result] = job.results()
        outcomes[name] = {
            "while running": job.return_value(),
            "job fields": sorted(k.decode() for k in redis.hgetall(job.key)),
            "status": job.get_status(), "ttl": redis.ttl(job.key) > 590,
            "result": (result.type, result.worker_name.replace(name, "W"), result.execution_id is not None,
                       redis.ttl(Result.get_key(job.id)) > 590),
            "finished": job.id in queue.finished_job_registry.get_job_ids(),
            "counts": (redis.hget(worker.key, "successful_job_count"), float(redis.hget(worker.key, "total_working_time")) > 0),
        }
    assert outcomes["rq"] == outcomes["rqplus"]
    assert outcomes["rq"]["while running"]["status"] == "started"
    assert queue.started_job_registry.count == 0 and redis.keys("rq:execution:*") == []
    assert redis.keys("rq:executions:*") == []


@pytest.mark.parametrize("worker_class", [ThreadWorker, AsyncWorker])
def test_dependents_retries_and_callbacks_keep_rqs_behaviour(redis, worker_class):
    queue = Queue("work", connection=redis)
    parent = queue.enqueue("tests.jobs.record", "parent", 0.2)
    child = queue.enqueue("tests.jobs.record", "child", depends_on=parent)
    retried = queue.enqueue("tests.jobs.fail_first_run", "retried", retry=Retry(max=1))
    called = queue.enqueue("tests.jobs.record", "called", on_success=Callback("tests.jobs.on_success"))
    worker_class([queue], connection=redis, concurrency=4).work(burst=True)
    assert [job.get_status(refresh=True) for job in (parent, child, retried, called)] == ["finished"] * 4
    assert ran(redis).index("child") > ran(redis).index("parent")
    assert ran(redis).count("retried") == 2 and retried.return_value() == "retried"
    assert redis.lrange("test:callbacks", 0, -1) == [f"{called.id}=called".encode()]


def test_max_jobs_counts_jobs_one_by_one(redis):
    queue = Queue("work", connection=redis)
    for n in range(6):
        queue.enqueue("tests.jobs.record", f"m{n}")
    ThreadWorker([queue], connection=redis, concurrency=4).work(burst=True, max_jobs=3)
    assert sorted(ran(redis)) == ["m0", "m1", "m2"] and queue.count == 3


@pytest.mark.parametrize("worker_class", CLASSES)
def test_rqs_stop_job_command_stops_that_job_and_only_it(redis, redis_server, processes, worker_class):
    queue = Queue("work", connection=redis)
    target = queue.enqueue("tests.jobs.spin" if "Thread" in worker_class else "tests.jobs.sleep_async", *(
        (60,) if "Thread" in worker_class else ("target", 60)))
    sibling = queue.enqueue("tests.jobs.record", "sibling", 2)
    proc = processes.rq_worker(redis_server.url, "work", worker_class=worker_class, burst=False,
                               env={"RQPLUS_CONCURRENCY": "4", REDIS_URL_ENV: redis_server.url})
    wait_for(lambda: queue.started_job_registry.count == 2 and "sibling" in ran(redis), timeout=60)
    send_stop_job_command(redis, target.id)
    wait_for(lambda: target.get_status(refresh=True) == "stopped", timeout=20)
    wait_for(lambda: sibling.get_status(refresh=True) == "finished", timeout=20)
    assert proc.poll() is None, "the worker runs on"


def test_running_jobs_heartbeats_keep_their_started_entries_alive(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    job = queue.enqueue("tests.jobs.record", "long", 4)
    proc = processes.rq_worker(redis_server.url, "work", worker_class="rqplus.ThreadWorker",
                               extra=("--job-monitoring-interval", "1"))
    wait_for(lambda: ran(redis) == ["long"], timeout=30)
    [(entry, first)] = redis.zrange(queue.started_job_registry.key, 0, -1, withscores=True)
    wait_for(lambda: redis.zscore(queue.started_job_registry.key, entry) not in (None, first), timeout=5)
    out = processes.finish(proc, 30)
    assert proc.returncode == 0, out
    assert job.get_status(refresh=True) == "finished" and queue.started_job_registry.count == 0


def test_forged_pickles_change_nothing_in_the_worker_that_reads_them(redis, redis_server, processes):
    """Issue 19 on a ThreadWorker process (one process reads and runs every job): see
    tests/pickles.py's assert_forgeries_change_nothing."""
    processes.rq_worker(redis_server.url, "work", worker_class="rqplus.ThreadWorker", burst=False,
                        env={"RQPLUS_CONCURRENCY": "4"})
    assert_forgeries_change_nothing(redis)
