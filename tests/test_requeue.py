"""Bulk requeue runs (rqplus.requeue) and `rqplus requeue`, against a real Redis (conftest's servers).

Covers: exactly the matching failed jobs requeued, each at its priority; jobs whose meta would
change left alone; a run resumed after its `rqplus requeue` process was SIGKILLed requeues every
matching job exactly once without rescanning the registry; one run per queue however many
threads, processes or CLIs start at once (the others join it); the CLI's errors.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading

import pytest
from redis import Redis
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from rqplus import Queue, UnknownQueueError, priority_of
from rqplus.exceptions import RequeueBusyError
from rqplus import requeue as runs
from rqplus.embedded import RedisServer, free_port
from rqplus.requeue import Filters
from tests.conftest import Processes, failed_in_bulk, wait_for
from tests.test_dashboard import fail


def run_to_end(redis: Redis, queue: str, filters: Filters | None = None, batch_size: int = 4) -> runs.Run:
    run, started = runs.start(redis, queue, filters)
    assert started
    assert runs.claim(redis, run.id, "test")
    return runs.drive(redis, run.id, "test", batch_size=batch_size)


def assert_in_priority_order(queue: Queue) -> None:
    priorities = [priority_of(job) for job in queue.get_jobs()]
    assert priorities == sorted(priorities)


def test_a_run_requeues_exactly_the_matching_jobs_each_at_its_priority(redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    matching = [queue.enqueue("tests.jobs.record", str(n), priority=(7, 0, 3, 9, 5)[n % 5]) for n in range(11)]
    other_function = [queue.enqueue("tests.jobs.fail", str(n)) for n in range(3)]
    other_exception = [queue.enqueue("tests.jobs.record", "x", priority=1)]
    for job in matching + other_function:
        fail(job)
    fail(other_exception[0], "Traceback ...\nRuntimeError: other")
    elsewhere = Queue("other", connection=redis).enqueue("tests.jobs.record", "other queue")
    fail(elsewhere)

    run = run_to_end(redis, "q", Filters(function="tests.jobs.record", exception="ValueError"))

    assert (run.status, run.total, run.examined, run.done, run.skipped) == ("done", 15, 15, 11, 0)
    assert sorted(queue.get_job_ids()) == sorted(job.id for job in matching)
    assert_in_priority_order(queue)
    for job in matching:
        job.refresh()
        assert job.get_status() == JobStatus.QUEUED and job.meta["priority"] == priority_of(job)
    assert {job.meta["priority"] for job in matching} == {7, 0, 3, 9, 5}
    assert sorted(FailedJobRegistry("q", connection=redis).get_job_ids()) == sorted(
        job.id for job in other_function + other_exception)
    assert FailedJobRegistry("other", connection=redis).get_job_ids() == [elsewhere.id]
    assert runs.load(redis, run.id).status == "done" and redis.ttl(run.key) > 0
    assert not redis.exists(runs.owner_key(run.id))


def test_a_worker_then_runs_them_most_urgent_first(redis: Redis, redis_server: RedisServer,
                                                   processes: Processes) -> None:
    queue = Queue("q", connection=redis)
    failed_in_bulk(queue, 30)
    run = run_to_end(redis, "q", batch_size=7)
    assert run.done == 30 and queue.count == 30
    processes.finish(processes.rq_worker(redis_server.url, "q"))
    started = [int(tag) for tag in (t.decode() for t in redis.lrange("test:ran", 0, -1))]
    assert [9 - n % 10 for n in started] == sorted(9 - n % 10 for n in started)


def test_jobs_whose_meta_would_change_are_skipped_and_json_jobs_stay_json(redis: Redis) -> None:
    from pathlib import PurePosixPath

    queue = Queue("q", connection=redis)
    odd_class = queue.enqueue("tests.jobs.record", "a", meta={"where": PurePosixPath("/x")})
    unreadable = queue.enqueue("tests.jobs.record", "b")
    as_json = Queue("q", connection=redis, serializer=JSONSerializer).enqueue("tests.jobs.record", "c", priority=2)
    for job in (odd_class, unreadable, as_json):
        fail(job)
    redis.hset(unreadable.key, "meta", b"\x80\x05not a pickle")
    gone = queue.enqueue("tests.jobs.record", "d")
    fail(gone)
    redis.delete(gone.key)
    before = {job.id: redis.hget(job.key, "meta") for job in (odd_class, unreadable)}

    run = run_to_end(redis, "q")

    assert (run.done, run.skipped, run.examined) == (1, 2, 4)
    assert queue.get_job_ids() == [as_json.id]
    assert redis.hget(as_json.key, "meta") == b'{"priority": 2}'          # still JSON
    assert {job.id: redis.hget(job.key, "meta") for job in (odd_class, unreadable)} == before
    assert sorted(FailedJobRegistry("q", connection=redis).get_job_ids()) == sorted(
        [odd_class.id, unreadable.id, gone.id])


def test_jobs_failing_again_during_a_run_are_left_for_the_next_one(redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    failed_in_bulk(queue, 6)
    run, _ = runs.start(redis, "q")
    late = queue.enqueue("tests.jobs.record", "late")
    queue.failed_job_registry.add(late, ttl=2 * 9_999_999_999)   # scored after the run's bound
    assert runs.claim(redis, run.id, "test")
    run = runs.drive(redis, run.id, "test", batch_size=4)
    assert run.done == 6 and queue.failed_job_registry.get_job_ids() == [late.id]


def test_an_unknown_queue_is_refused_and_a_live_run_is_not_taken_over(redis: Redis) -> None:
    with pytest.raises(UnknownQueueError, match="no queue 'nope'"):
        runs.start(redis, "nope")
    failed_in_bulk(Queue("q", connection=redis), 2)
    run, _ = runs.start(redis, "q")
    assert runs.claim(redis, run.id, "first") and not runs.claim(redis, run.id, "second")
    assert runs.orphaned(redis) == []
    assert runs.drive(redis, run.id, "second").running             # not its owner: nothing done
    redis.delete(runs.owner_key(run.id))                            # the first owner's heartbeat lapsed
    assert [orphan.id for orphan in runs.orphaned(redis)] == [run.id]


# --- one run per queue -------------------------------------------------------------------------

def end_run(redis: Redis, run: runs.Run) -> runs.Run:
    assert runs.claim(redis, run.id, "test")
    return runs.drive(redis, run.id, "test")


def test_threads_starting_at_once_make_one_run_and_the_others_join_it(redis: Redis, redis_server: RedisServer) -> None:
    failed_in_bulk(Queue("q", connection=redis), 20)
    for round_ in range(5):
        barrier, found = threading.Barrier(8), []

        def start() -> None:
            client = redis_server.client()
            barrier.wait()
            found.append(runs.start(client, "q", Filters(exception=None if round_ % 2 else "ValueError")))
            client.close()

        threads = [threading.Thread(target=start) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(started for _, started in found) == [False] * 7 + [True]
        assert len({run.id for run, _ in found}) == 1
        run = found[0][0]
        assert redis.get(runs.active_key("q")) == run.id.encode() and redis.ttl(runs.active_key("q")) == -1
        assert len(runs.runs(redis, limit=100)) == round_ + 1            # one run recorded per round
        end_run(redis, run)
        assert not redis.exists(runs.active_key("q"))                    # ended: the queue is free again


#: A process that waits for the test's go, then starts (or joins) a run over queue "q".
STARTER = """
import json, sys
from redis import Redis
from rqplus import requeue
redis = Redis.from_url(sys.argv[1])
redis.blpop("test:go", 30)
run, started = requeue.start(redis, "q", user=sys.argv[2])
print(json.dumps([run.id, started]))
"""


def test_two_processes_starting_at_once_make_one_run(redis: Redis, redis_server: RedisServer,
                                                      processes: Processes) -> None:
    failed_in_bulk(Queue("q", connection=redis), 20)
    for _ in range(3):
        starters = [processes.start([sys.executable, "-c", STARTER, redis_server.url, name]) for name in ("a", "b")]
        wait_for(lambda: sum(client["cmd"] == "blpop" for client in redis.client_list()) == 2)
        redis.rpush("test:go", 1, 1)                                   # both go at once
        answers = [json.loads(processes.finish(proc).strip().splitlines()[-1]) for proc in starters]
        assert sorted(started for _, started in answers) == [False, True], answers
        assert answers[0][0] == answers[1][0]
        assert end_run(redis, runs.load(redis, answers[0][0])).status == "done"
    assert len(runs.runs(redis)) == 3


def test_a_starter_that_died_before_recording_its_run_frees_the_queue(redis: Redis, monkeypatch) -> None:
    failed_in_bulk(Queue("q", connection=redis), 3)
    monkeypatch.setattr(runs, "JOIN_WAIT", 0.2)
    redis.set(runs.active_key("q"), "1700000000-deadbeef", ex=runs.STARTING_TTL)    # set, then the starter died
    with pytest.raises(RequeueBusyError, match="names run 1700000000-deadbeef, which no longer exists"):
        runs.start(redis, "q")
    redis.pexpire(runs.active_key("q"), 1)                              # ... STARTING_TTL later
    wait_for(lambda: not redis.exists(runs.active_key("q")))
    run, started = runs.start(redis, "q")
    assert started and end_run(redis, run).done == 3


def test_a_run_deleted_by_hand_says_which_key_to_delete(redis: Redis, monkeypatch) -> None:
    failed_in_bulk(Queue("q", connection=redis), 3)
    monkeypatch.setattr(runs, "JOIN_WAIT", 0.2)
    run, _ = runs.start(redis, "q")
    redis.delete(run.key)
    with pytest.raises(RequeueBusyError, match="run was deleted by hand \\(then delete rqplus:requeue:active:q\\)"):
        runs.start(redis, "q")
    redis.delete(runs.active_key("q"))
    assert runs.start(redis, "q")[1]


# --- rqplus requeue ----------------------------------------------------------------------------

def rqplus_requeue(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rqplus.cli", "requeue", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_requeues_with_filters_and_prints_a_summary(redis: Redis, redis_server: RedisServer) -> None:
    queue = Queue("q", connection=redis)
    wanted = failed_in_bulk(queue, 25)
    failed_in_bulk(queue, 5, exception="KeyError", first=25)
    result = rqplus_requeue("--queue", "q", "--exception", "ValueError", "--url", redis_server.url,
                            "--batch-size", "10")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("requeued 25 of 30 failed jobs in "), result.stdout
    assert sorted(queue.get_job_ids()) == sorted(job.id for job in wanted)
    assert_in_priority_order(queue)


def test_resume_after_the_cli_is_killed_requeues_each_matching_job_once(redis: Redis, redis_server: RedisServer,
                                                                        processes: Processes) -> None:
    queue = Queue("q", connection=redis)
    wanted = failed_in_bulk(queue, 2000)
    others = failed_in_bulk(queue, 1000, function="tests.jobs.fail", first=2000)
    proc = processes.start([sys.executable, "-m", "rqplus.cli", "requeue", "--queue", "q", "--function",
                            "tests.jobs.record", "--url", redis_server.url, "--batch-size", "20", "--throttle", "0.01"])

    def started() -> runs.Run | None:
        found = runs.runs(redis)
        return found[0] if found and found[0].done >= 200 else None

    run = wait_for(started, timeout=60)
    processes.kill_group(proc)
    proc.wait(10)
    killed = runs.load(redis, run.id)
    assert killed.running and 200 <= killed.done < 2000, processes.output(proc)
    assert runs.orphaned(redis) == []                                # its heartbeat still counts
    redis.pexpire(runs.owner_key(run.id), 1)                          # ... until it lapses
    wait_for(lambda: runs.orphaned(redis))

    result = rqplus_requeue("--resume", "--url", redis_server.url, "--batch-size", "100")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("requeued 2000 of 3000 failed jobs in "), result.stdout
    ids = queue.get_job_ids()
    assert len(ids) == len(set(ids)) == 2000 and set(ids) == {job.id for job in wanted}
    assert sorted(queue.failed_job_registry.get_job_ids()) == sorted(job.id for job in others)
    resumed = runs.load(redis, run.id)
    assert resumed.status == "done" and resumed.done == 2000
    # the resumed part started at the cursor: the registry was not read again from its start
    assert resumed.examined <= 3000 + 100
    assert rqplus_requeue("--resume", "--url", redis_server.url).stdout == "rqplus requeue: nothing to resume\n"


def test_cli_errors_for_an_unknown_queue_and_an_unreachable_redis(redis: Redis, redis_server: RedisServer) -> None:
    result = rqplus_requeue("--queue", "nope", "--url", redis_server.url)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("rqplus requeue: error: no queue 'nope'") and "Traceback" not in result.stderr
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    result = rqplus_requeue("--queue", "q", "--url", url)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in result.stderr and "s3cret-pw" not in result.stderr
    result = rqplus_requeue("--url", redis_server.url)
    assert result.returncode == 2 and "--queue" in result.stderr


def test_a_second_cli_joins_a_run_of_the_same_filters_and_refuses_other_filters(
        redis: Redis, redis_server: RedisServer, processes: Processes) -> None:
    queue = Queue("q", connection=redis)
    failed_in_bulk(queue, 30)
    run, _ = runs.start(redis, "q", Filters(exception="ValueError"), user="admin")   # as a dashboard starts it
    assert runs.claim(redis, run.id, "dashboard")                                     # ... and drives it

    other = rqplus_requeue("--queue", "q", "--url", redis_server.url)
    assert other.returncode == 1 and other.stdout == ""
    assert other.stderr == (f"rqplus requeue: run {run.id} (exception=ValueError, by admin, 0 of 30 examined) is "
                            "requeueing queue 'q': one bulk requeue per queue at a time; run this again once it has "
                            "ended\n")

    joined = processes.start([sys.executable, "-m", "rqplus.cli", "requeue", "--queue", "q", "--exception",
                              "ValueError", "--url", redis_server.url])
    wait_for(lambda: "joining run" in processes.output(joined))
    assert joined.poll() is None and queue.count == 0                  # watching the dashboard's driver
    redis.delete(runs.owner_key(run.id))                               # the dashboard died: the CLI drives it
    out = processes.finish(joined)
    assert joined.returncode == 0, out
    assert f"rqplus requeue: joining run {run.id} (exception=ValueError, by admin, 0 of 30 examined)" in out
    assert "requeued 30 of 30 failed jobs in " in out and f"(run {run.id}, " in out
    assert queue.count == 30 and [r.id for r in runs.runs(redis)] == [run.id]


def test_exception_and_function_rules_are_the_dashboards() -> None:
    from rqplus.dashboard import actions

    assert actions.exception_type is runs.exception_type
    assert runs.exception_type("Traceback ...\n  File x\nmod.Error: a: b\nmore") == "mod.Error"
    assert runs.exception_type("not a type name: x") == ""
    assert runs.function_name(pickle.dumps(("tests.jobs.record", None, (), {}))) == "tests.jobs.record"
    assert runs.function_name(b"\x80\x05junk") == "?"
