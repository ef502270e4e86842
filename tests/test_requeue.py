"""Bulk requeue runs (rqplus.requeue) and `rqplus requeue`, against a real Redis (conftest's servers).

Covers: exactly the matching failed jobs requeued, each at its priority; jobs whose meta would
change left alone; a run resumed after its `rqplus requeue` process was SIGKILLed requeues every
matching job exactly once without rescanning the registry; the CLI's errors.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from redis import Redis
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from rqplus import Queue, UnknownQueueError, priority_of
from rqplus import requeue as runs
from rqplus.embedded import RedisServer, free_port
from rqplus.requeue import Filters
from tests.conftest import Processes, failed_in_bulk, wait_for
from tests.test_dashboard import fail


def run_to_end(redis: Redis, queue: str, filters: Filters | None = None, batch_size: int = 4) -> runs.Run:
    run = runs.start(redis, queue, filters)
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
    run = runs.start(redis, "q")
    late = queue.enqueue("tests.jobs.record", "late")
    queue.failed_job_registry.add(late, ttl=2 * 9_999_999_999)   # scored after the run's bound
    assert runs.claim(redis, run.id, "test")
    run = runs.drive(redis, run.id, "test", batch_size=4)
    assert run.done == 6 and queue.failed_job_registry.get_job_ids() == [late.id]


def test_an_unknown_queue_is_refused_and_a_live_run_is_not_taken_over(redis: Redis) -> None:
    with pytest.raises(UnknownQueueError, match="no queue 'nope'"):
        runs.start(redis, "nope")
    failed_in_bulk(Queue("q", connection=redis), 2)
    run = runs.start(redis, "q")
    assert runs.claim(redis, run.id, "first") and not runs.claim(redis, run.id, "second")
    assert runs.orphaned(redis) == []
    assert runs.drive(redis, run.id, "second").running             # not its owner: nothing done
    redis.delete(runs.owner_key(run.id))                            # the first owner's heartbeat lapsed
    assert [orphan.id for orphan in runs.orphaned(redis)] == [run.id]


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


def test_exception_and_function_rules_are_the_dashboards() -> None:
    from rqplus.dashboard import actions

    assert actions.exception_type is runs.exception_type
    assert runs.exception_type("Traceback ...\n  File x\nmod.Error: a: b\nmore") == "mod.Error"
    assert runs.exception_type("not a type name: x") == ""
    assert runs.function_name(pickle.dumps(("tests.jobs.record", None, (), {}))) == "tests.jobs.record"
    assert runs.function_name(b"\x80\x05junk") == "?"
