"""rqplus/recovery.py and the reliable fetch: real workers SIGKILLed, nothing lost, nothing stuck."""

from __future__ import annotations

import random
import time

from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

import pytest

from rqplus import Queue, Worker, priority_of
from rqplus.recovery import read_identity, worker_identity
from tests.conftest import commands_sent, wait_for
from tests.jobs import ran

MONITORING = ("--job-monitoring-interval", "5")


def runs(redis, tag: str) -> int:
    return int(redis.hget("test:runs", tag) or 0)


def describe(redis, queue: Queue, tag: str) -> str:
    """Status, rescues, runs and last error of the job of ``tag``: what a failing crash test needs to say."""
    for job_id in queue.failed_job_registry.get_job_ids():
        job = Job.fetch(job_id, connection=redis)
        if job.args[0] == tag:
            result = job.latest_result()
            return (f"{job.get_status()}, rescues {redis.hget(job.key, 'rescues')}, runs {runs(redis, tag)}: "
                    f"{result.exc_string.strip().splitlines()[-1] if result and result.exc_string else None}")
    return f"not finished nor failed, runs {runs(redis, tag)}"


def test_job_of_a_sigkilled_worker_runs_again_on_a_live_worker(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    job = queue.enqueue("tests.jobs.count_run", "long", 3, priority=2)
    victim = processes.rq_worker(redis_server.url, "work", burst=False, extra=MONITORING)
    wait_for(lambda: runs(redis, "long") == 1)
    processes.kill_group(victim)
    killed_at = time.monotonic()
    processes.rq_worker(redis_server.url, "work", burst=False, extra=MONITORING)
    wait_for(lambda: runs(redis, "long") == 2, timeout=5 + 15)  # job_monitoring_interval + 15 s
    print(f"rescued and restarted {time.monotonic() - killed_at:.1f} s after the kill")
    wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30)
    job.refresh()
    assert redis.hget(job.key, "rescues") == b"1"
    assert priority_of(job) == 2
    assert StartedJobRegistry("work", connection=redis).count == 0


def test_a_job_that_keeps_killing_its_worker_fails_after_the_rescue_cap(redis, redis_server, processes):
    job = Queue("work", connection=redis).enqueue("tests.jobs.crash_worker", "pill")
    for _ in range(6):  # bounded: cap 2 means 3 runs, then the 4th worker fails it
        worker = processes.rq_worker(redis_server.url, "work", burst=False, extra=MONITORING,
                                     env={"RQPLUS_MAX_RESCUES": "2"})
        wait_for(lambda: worker.poll() is not None or job.get_status(refresh=True) == "failed", timeout=40)
        if job.get_status(refresh=True) == "failed":
            break
    assert job.get_status(refresh=True) == "failed"
    assert ran(redis) == ["pill"] * 3
    assert job.id in FailedJobRegistry("work", connection=redis)
    assert "abandoned 3 times" in Job.fetch(job.id, connection=redis).latest_result().exc_string


def test_ids_stuck_in_the_intermediate_list_are_requeued(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    job = queue.enqueue("tests.jobs.count_run", "stuck")
    redis.lmove(queue.key, queue.intermediate_queue_key)  # a worker died right after fetching it
    assert queue.count == 0
    processes.rq_worker(redis_server.url, "work", burst=False, extra=MONITORING)
    wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30)
    assert runs(redis, "stuck") == 1
    assert redis.llen(queue.intermediate_queue_key) == 0


def test_multi_queue_worker_serves_queues_in_the_order_named(redis, redis_server, processes):
    for name in ("logs", "emails", "payments"):
        queue = Queue(name, connection=redis)
        for n in range(3):
            queue.enqueue("tests.jobs.record", f"{name}{n}", priority=9 - n)
    worker = processes.rq_worker(redis_server.url, "payments", "emails", "logs")
    processes.finish(worker)
    assert [tag[:-1] for tag in ran(redis)] == ["payments"] * 3 + ["emails"] * 3 + ["logs"] * 3
    assert ran(redis)[:3] == ["payments2", "payments1", "payments0"]  # priority inside each queue
    for name in ("logs", "emails", "payments"):
        assert redis.llen(Queue(name, connection=redis).intermediate_queue_key) == 0


@pytest.mark.parametrize("queues", [("a",), ("a", "b", "c")])
def test_idle_workers_block_with_about_one_command_a_second_beyond_heartbeats(redis, redis_server, processes, queues):
    processes.rq_worker(redis_server.url, *queues, burst=False)
    wait_for(lambda: redis.keys("rq:worker:*"), timeout=30)
    time.sleep(1)
    sent = commands_sent(redis_server, 10)
    beyond_heartbeats = [c for c in sent if not c.split()[1].startswith(("rq:worker:", "rqplus:worker:"))]
    print(f"idle worker on {len(queues)} queue(s), 10 s: {len(sent)} commands, {len(beyond_heartbeats)} beyond "
          f"heartbeats: {sorted({c.split()[0] for c in beyond_heartbeats})}")
    assert len(beyond_heartbeats) <= 10
    assert any(c.startswith(("BLMOVE", "BLPOP")) for c in beyond_heartbeats), "an idle worker must block"
    Queue(queues[-1], connection=redis).enqueue("tests.jobs.record", "woken")
    wait_for(lambda: ran(redis) == ["woken"], timeout=3)


def test_sigkill_at_random_moments_loses_nothing(redis, redis_server, processes):
    """>= 50 kills of single- and multi-queue worker groups; every job finishes, none twice unless rescued."""
    queues = {name: Queue(name, connection=redis) for name in ("payments", "emails", "logs")}
    rng = random.Random(1234)
    tags = []
    for n in range(240):
        name = rng.choice(list(queues))
        tags.append(f"{name}-{n}")
        queues[name].enqueue("tests.jobs.count_run", tags[-1], rng.choice([0, 0.05, 0.2]),
                             priority=rng.randint(0, 9))
    layouts = [("payments", "emails", "logs"), ("payments",), ("emails", "logs"), ("logs", "payments")]
    # kills this frequent can hit one urgent job 4 times in a row: the default cap (3 rescues, tested
    # above) would then fail it on purpose; here every job must end FINISHED
    env = {"RQPLUS_RESCUE_INTERVAL": "1", "RQPLUS_MAX_RESCUES": "1000"}
    extra = ("--job-monitoring-interval", "1")

    def start(layout):
        return processes.rq_worker(redis_server.url, *layout, burst=False, extra=extra, env=env)

    workers = {layout: start(layout) for layout in layouts}
    kills = 0
    deadline = time.monotonic() + 150
    while kills < 50 and time.monotonic() < deadline:
        time.sleep(rng.uniform(0.1, 0.8))
        layout = rng.choice(layouts)
        processes.kill_group(workers[layout])
        workers[layout].wait(5)
        kills += 1
        workers[layout] = start(layout)
    assert kills >= 50

    def leftovers() -> dict[str, tuple[int, int, int]]:
        """Per queue: queued, in the intermediate list, started (ZCARD: `.count` would run RQ's cleanup)."""
        return {name: (q.count, redis.llen(q.intermediate_queue_key), redis.zcard(q.started_job_registry.key))
                for name, q in queues.items()}

    def all_finished() -> bool:
        return all(runs(redis, tag) for tag in tags) and not any(sum(v) for v in leftovers().values())

    try:
        wait_for(all_finished, timeout=90, interval=0.5)
    except AssertionError:
        missing = [tag for tag in tags if not runs(redis, tag)]
        raise AssertionError(f"never ran: {missing}; queued/intermediate/started: {leftovers()}") from None
    rescued_twice = 0
    by_tag = {}
    for name, q in queues.items():
        for job_id in q.finished_job_registry.get_job_ids():
            job = Job.fetch(job_id, connection=redis)
            by_tag[job.args[0]] = int(redis.hget(job.key, "rescues") or 0)
    unfinished = {tag: describe(redis, queues[tag.split("-")[0]], tag) for tag in set(tags) - set(by_tag)}
    assert not unfinished, f"every job must end FINISHED: {unfinished}"
    for tag in tags:
        if runs(redis, tag) > 1:
            rescued_twice += 1
            assert by_tag[tag] >= 1, f"{tag} ran {runs(redis, tag)} times without a rescue"
    print(f"{kills} kills, {len(tags)} jobs, {rescued_twice} ran more than once (all rescued)")


def test_the_liveness_marker_names_the_workers_class_and_concurrency(redis) -> None:
    class PoolWorker(Worker):
        concurrency = 4

    assert read_identity(worker_identity(PoolWorker, PoolWorker.concurrency)) == (
        "tests.test_recovery.test_the_liveness_marker_names_the_workers_class_and_concurrency.<locals>.PoolWorker", 4)
    assert read_identity(Worker(["q"], connection=redis).identity) == ("rqplus.worker.Worker", 1)
    for unreadable in (None, b"", b"1", b"{}", b'{"class": "x", "concurrency": "many"}', b"\xff"):
        assert read_identity(unreadable) is None
