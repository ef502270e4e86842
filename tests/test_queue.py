"""rqplus/queue.py against a real redis-server: run order, every entry point, nothing half-written."""

from __future__ import annotations

import math
import random
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from rq import Queue as RQQueue
from rq import Retry
from rq.exceptions import InvalidJobOperation
from rq.registry import ScheduledJobRegistry

from rqplus import Queue, Worker, priority_of, scripts
from rqplus.compat import RQ3
from rqplus.embedded import DURABLE_CONFIG
from rqplus.exceptions import DurabilityError
from rqplus.queue import ENQUEUE_MANY_CHUNK
from rqplus.scheduler import PriorityScheduler
from tests.jobs import ran

JOB = "tests.jobs.record"


def priorities_in_queue(queue: Queue) -> list[int]:
    return [priority_of(job) for job in queue.get_jobs()]


def snapshot(redis) -> dict[bytes, bytes]:
    """Every key with its serialized value: equal snapshots mean nothing was written."""
    return {key: redis.dump(key) for key in redis.keys("*")}


def test_jobs_are_kept_in_priority_order_fifo_within_a_priority(redis):
    queue = Queue("q", connection=redis)
    rng = random.Random(7)
    wanted = [rng.randint(0, 9) for _ in range(300)]
    jobs = [queue.enqueue(JOB, str(n), priority=p) for n, p in enumerate(wanted)]
    expected = [job.id for _, _, job in sorted((p, n, job) for n, (p, job) in enumerate(zip(wanted, jobs)))]
    assert queue.get_job_ids() == expected


def test_priority_is_stored_in_meta_and_beside_the_window(redis):
    queue = Queue("q", connection=redis)
    job = queue.enqueue(JOB, "a", priority=2, meta={"owner": "x"})
    assert job.meta == {"owner": "x", "priority": 2}
    assert redis.hget(queue.window_key, job.id) == b"2"
    assert redis.hget(job.key, "priority") is None, "the job hash is RQ's alone"
    assert priority_of(job.fetch(job.id, connection=redis)) == 2


def test_default_priority_and_meta_priority(redis):
    queue = Queue("q", connection=redis)
    assert priority_of(queue.enqueue(JOB, "a")) == 5
    assert priority_of(queue.enqueue(JOB, "b", meta={"priority": 1})) == 1


def test_at_front_goes_first_among_its_own_priority_only(redis):
    queue = Queue("q", connection=redis)
    urgent = queue.enqueue(JOB, "u", priority=0)
    same = [queue.enqueue(JOB, str(n), priority=5) for n in range(3)]
    late = queue.enqueue(JOB, "l", priority=9)
    front = queue.enqueue(JOB, "f", priority=5, at_front=True)
    assert queue.get_job_ids() == [urgent.id, front.id, *[j.id for j in same], late.id]


def test_enqueue_call_and_enqueue_many_take_priority(redis):
    queue = Queue("q", connection=redis)
    low = queue.enqueue_call(func=JOB, args=("low",), priority=9)
    high, mid = queue.enqueue_many(
        [Queue.prepare_data(JOB, ("high",), priority=0), Queue.prepare_data(JOB, ("mid",), priority=4)]
    )
    assert queue.get_job_ids() == [high.id, mid.id, low.id]


def test_unique_enqueue_is_put_in_priority_order(redis):
    queue = Queue("q", connection=redis)
    queue.enqueue(JOB, "a", priority=5)
    job = queue.enqueue(JOB, "u", priority=1, job_id="only-once", unique=True)
    assert queue.get_job_ids()[0] == job.id
    assert redis.hget(queue.window_key, job.id) == b"1"


def test_jobs_enqueued_by_stock_rq_count_as_default_priority(redis):
    Queue("q", connection=redis).enqueue(JOB, "plus9", priority=9)
    stock = RQQueue("q", connection=redis).enqueue(JOB, "stock")  # appended at the tail by RQ
    assert RQQueue("q", connection=redis).get_job_ids()[-1] == stock.id
    urgent = Queue("q", connection=redis).enqueue(JOB, "p4", priority=4)
    ids = RQQueue("q", connection=redis).get_job_ids()
    assert ids.index(urgent.id) == 0
    assert Queue("q", connection=redis).reposition(stock.id)
    assert Queue("q", connection=redis).get_job_ids()[1] == stock.id


def test_reposition_of_a_job_not_in_the_queue_is_false(redis):
    assert Queue("q", connection=redis).reposition("no-such-job") is False


ENTRY_POINTS = {
    "enqueue": lambda q, p: q.enqueue(JOB, "x", priority=p),
    "enqueue_call": lambda q, p: q.enqueue_call(func=JOB, args=("x",), priority=p),
    "enqueue_at": lambda q, p: q.enqueue_at(datetime.now(UTC) + timedelta(hours=1), JOB, "x", priority=p),
    "enqueue_in": lambda q, p: q.enqueue_in(timedelta(hours=1), JOB, "x", priority=p),
    "enqueue_many": lambda q, p: q.enqueue_many([Queue.prepare_data(JOB, ("x",), priority=p)]),
    "meta": lambda q, p: q.enqueue(JOB, "x", meta={"priority": p}),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("bad, error", [("1", TypeError), (1.5, TypeError), (math.nan, TypeError),
                                        (True, TypeError), (-1, ValueError), (10, ValueError)])
def test_bad_priority_fails_before_anything_is_written(redis, entry, bad, error):
    queue = Queue("q", connection=redis)
    queue.enqueue(JOB, "already-there")
    before = snapshot(redis)
    with pytest.raises(error, match=r"0 \(most urgent\) to 9"):
        ENTRY_POINTS[entry](queue, bad)
    assert snapshot(redis) == before


def test_requeue_failed_keeps_priority(redis):
    queue = Queue("q", connection=redis)
    failed = queue.enqueue("tests.jobs.fail", "f", priority=1)
    Worker([queue], connection=redis).work(burst=True)
    assert failed.get_status(refresh=True) == "failed"
    waiting = [queue.enqueue(JOB, str(n), priority=5) for n in range(3)]
    queue.requeue_failed(failed.id)
    assert queue.get_job_ids() == [failed.id, *[j.id for j in waiting]]
    with pytest.raises(InvalidJobOperation):
        queue.requeue_failed(waiting[0].id)


def test_retry_keeps_priority(redis):
    queue = Queue("q", connection=redis)
    first = queue.enqueue(JOB, "first", priority=0)
    retried = queue.enqueue("tests.jobs.fail", "retried", priority=1, retry=Retry(max=1))
    later = [queue.enqueue(JOB, str(n), priority=p) for n, p in enumerate([5, 9])]
    Worker([queue], connection=redis).work(burst=True, max_jobs=2)
    assert ran(redis) == ["first", "retried"]
    assert first.get_status(refresh=True) == "finished"
    assert queue.get_job_ids() == [retried.id, *[j.id for j in later]]


def test_scheduled_jobs_join_the_queue_at_their_priority(redis):
    queue = Queue("q", connection=redis)
    waiting = [queue.enqueue(JOB, str(n), priority=5) for n in range(3)]
    due = queue.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), JOB, "due", priority=0)
    assert ScheduledJobRegistry(queue=queue).get_job_ids() == [due.id]
    scheduler = PriorityScheduler([queue], connection=redis)
    scheduler.acquire_locks()
    scheduler.enqueue_scheduled_jobs()
    scheduler.release_locks()
    assert queue.get_job_ids() == [due.id, *[j.id for j in waiting]]


def test_dependents_join_the_queue_at_their_priority(redis):
    """rq 3.0 makes a dependent READY_TO_ENQUEUE, then pushes it with a stock Queue; 2.12 enqueues it."""
    queue = Queue("q", connection=redis)
    parent = queue.enqueue(JOB, "parent", priority=0)
    waiting = [queue.enqueue(JOB, str(n), priority=5) for n in range(3)]
    dependent = queue.enqueue(JOB, "dependent", priority=1, depends_on=parent)
    assert dependent.get_status() == "deferred"
    Worker([queue], connection=redis).work(burst=True, max_jobs=1)
    assert ran(redis) == ["parent"]
    assert queue.get_job_ids() == [dependent.id, *[j.id for j in waiting]]


@pytest.mark.skipif(not RQ3, reason="RateLimit is new in rq 3.0")
def test_rate_limited_jobs_join_the_queue_at_their_priority_when_admitted(redis):
    from rq import RateLimit

    limit = RateLimit("partner-api", concurrency=1)
    queue = Queue("q", connection=redis)
    holder = queue.enqueue(JOB, "holder", priority=0, rate_limit=limit)  # takes the one slot
    waiting_urgent = queue.enqueue(JOB, "urgent", priority=1, rate_limit=limit)
    assert (holder.get_status(), waiting_urgent.get_status()) == ("queued", "rate_limited")
    others = [queue.enqueue(JOB, str(n), priority=5) for n in range(3)]
    Worker([queue], connection=redis).work(burst=True, max_jobs=1)  # the holder ends: its slot frees
    assert ran(redis) == ["holder"]
    assert waiting_urgent.get_status(refresh=True) == "queued"
    assert queue.get_job_ids() == [waiting_urgent.id, *[j.id for j in others]]
    assert priority_of(queue.fetch_job(waiting_urgent.id)) == 1


@pytest.mark.skipif(not RQ3, reason="RateLimit is new in rq 3.0")
def test_a_rate_limited_job_admitted_at_once_is_enqueued_at_its_priority(redis):
    from rq import RateLimit

    queue = Queue("q", connection=redis)
    others = [queue.enqueue(JOB, str(n), priority=5) for n in range(3)]
    urgent = queue.enqueue(JOB, "urgent", priority=0, rate_limit=RateLimit("k", concurrency=2))
    assert urgent.get_status() == "queued" and queue.get_job_ids() == [urgent.id, *[j.id for j in others]]


def test_worker_with_scheduler_runs_due_jobs_by_priority(redis):
    queue = Queue("q", connection=redis)
    queue.enqueue(JOB, "normal", priority=5)
    queue.enqueue_in(timedelta(seconds=-1), JOB, "urgent-due", priority=0)
    Worker([queue], connection=redis).work(burst=True, with_scheduler=True)
    assert ran(redis) == ["urgent-due", "normal"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.integers(0, 9), st.none()), min_size=1, max_size=40))
def test_no_priority_inversion_under_any_interleaving(redis, ops):
    """ops: an int enqueues at that priority, None dequeues (RQ's own reliable LMOVE)."""
    redis.flushall()
    queue = Queue("q", connection=redis)
    present: dict[str, tuple[int, int]] = {}  # job id -> (priority, enqueue sequence)
    for seq, op in enumerate(ops):
        if op is not None:
            present[queue.enqueue(JOB, "x", priority=op).id] = (op, seq)
            continue
        result = Queue.dequeue_any([queue], None, connection=redis)
        if result is None:
            assert not present
            continue
        job, _ = result
        assert present[job.id] == min(present.values()), "a less urgent or later job was served first"
        del present[job.id]


def test_durable_queue_refuses_a_non_durable_redis_and_writes_nothing(redis):
    queue = Queue("payments", connection=redis, durable=True)
    before = snapshot(redis)
    with pytest.raises(DurabilityError, match="AOF is off") as err:
        queue.enqueue(JOB, "charge")
    assert err.value.problems and "appendonly yes" in err.value.problems[0]
    assert snapshot(redis) == before


def test_durable_queue_enqueues_on_a_durable_redis(redis_factory):
    server = redis_factory(**DURABLE_CONFIG)
    job = Queue("payments", connection=server.client(), durable=True).enqueue(JOB, "charge", priority=1)
    assert job.get_status() == "queued"


@pytest.mark.parametrize("enqueue, error, message", [
    (lambda q: q.enqueue(lambda: None), ValueError, "__main__|cannot be imported"),
    (lambda q: q.enqueue(JOB, threading.Lock()), TypeError, "cannot be serialized.*lock"),
    (lambda q: q.enqueue(JOB, lambda: None), TypeError, "cannot be serialized"),
    (lambda q: q.enqueue(JOB, "x" * 10_000_000), ValueError, "over the 1048576 byte limit"),
    (lambda q: q.enqueue_many([Queue.prepare_data(JOB, (threading.Lock(),))]), TypeError, "cannot be serialized"),
])
def test_bad_job_input_fails_clearly_before_anything_is_written(redis, enqueue, error, message):
    queue = Queue("q", connection=redis)
    before = snapshot(redis)
    with pytest.raises(error, match=message):
        enqueue(queue)
    assert snapshot(redis) == before


def test_nested_functions_are_refused_at_enqueue(redis):
    def nested():
        return None

    nested.__module__ = "tests.test_queue"
    with pytest.raises(ValueError, match="cannot be imported by a worker"):
        Queue("q", connection=redis).enqueue(nested)


def test_out_of_memory_redis_refuses_the_enqueue_whole(redis_factory):
    server = redis_factory(maxmemory="2mb", maxmemory_policy="noeviction")
    client = server.client()
    queue = Queue("q", connection=client)
    with pytest.raises(OutOfMemoryError):
        for n in range(10_000):
            queue.enqueue(JOB, "x" * 2000, priority=n % 10)
    before = snapshot(client)
    with pytest.raises(OutOfMemoryError):
        queue.enqueue(JOB, "one more")
    assert snapshot(client) == before
    ids = queue.get_job_ids()
    assert all(client.exists(f"rq:job:{job_id}") for job_id in ids), "a queued id without its job hash"


def test_read_only_replica_is_a_clear_error(redis_factory):
    primary = redis_factory()
    replica = redis_factory(replicaof=("127.0.0.1", primary.port))
    with pytest.raises(ReadOnlyError, match="read only replica"):
        Queue("q", connection=replica.client()).enqueue(JOB, "x")


def test_multi_queue_dequeue_refuses_an_indefinite_timeout_like_rq(redis):
    queues = [Queue("a", connection=redis), Queue("b", connection=redis)]
    with pytest.raises(ValueError, match="indefinite timeouts"):
        Queue.dequeue_any(queues, timeout=0, connection=redis)
    assert Queue.dequeue_any(queues, timeout=None, connection=redis) is None
    queues[1].enqueue(JOB, "b")
    job, queue = Queue.dequeue_any(queues, timeout=None, connection=redis)
    assert queue.name == "b" and redis.lrange(queue.intermediate_queue_key, 0, -1) == [job.id.encode()]


# --- faults and odd input at enqueue -------------------------------------------------------------


def test_an_enqueue_whose_reply_was_lost_is_resent_without_a_second_job(redis, monkeypatch):
    """Redis wrote the enqueue, the connection broke before the reply: the re-sent script does nothing."""
    queue = Queue("q", connection=redis)
    sent = []

    def reply_lost_once(*args, **kwargs):
        sent.append(scripts.enqueue(*args, **kwargs))
        if len(sent) == 1:
            raise RedisConnectionError("Connection closed by server.")
        return sent[-1]

    monkeypatch.setattr("rqplus.queue.enqueue", reply_lost_once)
    job = queue.enqueue(JOB, "once")
    assert sent == [1, 0], "written once, then recognised when re-sent"
    assert queue.get_job_ids() == [job.id]
    assert job.get_status(refresh=True) == "queued"


def test_a_queue_entry_that_is_no_hash_does_not_stop_enqueues(redis):
    redis.set("rq:job:x", "s")
    redis.rpush("rq:queue:gs", "x")
    queue = Queue("gs", connection=redis)
    urgent, late = queue.enqueue(JOB, "urgent", priority=0), queue.enqueue(JOB, "late", priority=9)
    assert redis.lrange(queue.key, 0, -1) == [urgent.id.encode(), b"x", late.id.encode()]  # x counts as priority 5


@pytest.mark.parametrize("corrupt, message", [
    (lambda redis: redis.set("rq:queue:q", "not a list"), "rq:queue:q holds a string, not a queue list"),
    (lambda redis: redis.set("rq:job:taken", "s"), "rq:job:taken holds a string, not a job hash"),
    (lambda redis: redis.set("rqplus:backlog:q:5", "s"), "WRONGTYPE"),       # the queue's own keys, forged
    (lambda redis: redis.set("rqplus:window:q", "s"), "WRONGTYPE"),
    (lambda redis: redis.set("rqplus:window:q:levels", "s"), "WRONGTYPE"),
])
def test_an_enqueue_that_cannot_be_inserted_writes_nothing(redis, corrupt, message):
    corrupt(redis)
    before = snapshot(redis)
    with pytest.raises(ResponseError, match=message):
        Queue("q", connection=redis).enqueue(JOB, "x", job_id="taken")
    assert snapshot(redis) == before


@pytest.mark.parametrize("enqueue", [lambda q: q.enqueue(42), lambda q: q.enqueue_call(func=None),
                                     lambda q: q.enqueue_at(datetime.now(UTC), 4.2)])
def test_a_job_function_that_is_neither_callable_nor_a_path_is_a_type_error(redis, enqueue):
    before = snapshot(redis)
    with pytest.raises(TypeError, match="the job function .*`f`.* must be a callable or its dotted path"):
        enqueue(Queue("q", connection=redis))
    assert snapshot(redis) == before


# --- the window and the backlog (rqplus.priority) -----------------------------------------------

def expected_order(jobs: list, wanted: list[int]) -> list[str]:
    return [job.id for _, _, job in sorted((p, n, job) for n, (p, job) in enumerate(zip(wanted, jobs)))]


def fill_past_the_window(queue: Queue, extra: int = 200, seed: int = 3) -> list[str]:
    """WINDOW + extra jobs of mixed priorities, by one enqueue_many; their ids in run order."""
    rng = random.Random(seed)
    wanted = [rng.choice([0, 2, 5, 5, 9]) for _ in range(scripts.WINDOW + extra)]
    jobs = queue.enqueue_many([Queue.prepare_data(JOB, (str(n),), priority=p) for n, p in enumerate(wanted)])
    return expected_order(jobs, wanted)


def test_a_backlog_beyond_the_window_is_counted_listed_and_taken_in_order(redis):
    queue = Queue("q", connection=redis)
    order = fill_past_the_window(queue)
    assert redis.llen(queue.key) == scripts.WINDOW, "RQ's list holds the window only"
    assert queue.count == len(order) and len(queue) == len(order)
    assert RQQueue("q", connection=redis).count == scripts.WINDOW, "stock RQ sees the window"
    assert queue.get_job_ids() == order
    assert queue.get_job_ids(scripts.WINDOW - 5, 10) == order[scripts.WINDOW - 5:scripts.WINDOW + 5]
    assert queue.get_job_ids(0, -2) == order[:-1] and queue.get_job_ids(-3) == order[-3:]
    assert queue.get_job_position(order[scripts.WINDOW + 7]) == scripts.WINDOW + 7
    taken = []
    while (found := Queue.dequeue_any([queue], None, connection=redis)) is not None:
        taken.append(found[0].id)
    assert taken == order
    assert redis.exists(queue.window_key, *queue.backlog_keys) == 0, "nothing left behind"


def test_enqueue_many_writes_in_chunks_one_function_call_each(redis):
    queue = Queue("q", connection=redis)
    first = queue.enqueue(JOB, "first")  # the library is loaded (and checked) before the count
    redis.config_resetstat()
    order = fill_past_the_window(queue, extra=50)
    stats = redis.info("commandstats")
    assert stats["cmdstat_fcall"]["calls"] == math.ceil((scripts.WINDOW + 50) / ENQUEUE_MANY_CHUNK)
    assert "cmdstat_exec" not in stats, "no MULTI/EXEC: every job's writes are inside a call"
    assert [job_id for job_id in queue.get_job_ids() if job_id != first.id] == order


def test_remove_cancel_and_delete_reach_the_backlog(redis):
    queue = Queue("q", connection=redis)
    order = fill_past_the_window(queue, extra=20)
    removed, cancelled, deleted = (queue.fetch_job(job_id) for job_id in order[-3:])
    assert queue.remove(removed) == 1
    cancelled.cancel()   # RQ's cancel removes the id from RQ's list only: the refill drops it
    deleted.delete()
    left = [job_id for job_id in order if job_id not in {removed.id, cancelled.id, deleted.id}]
    taken = []
    while (found := Queue.dequeue_any([queue], None, connection=redis)) is not None:
        taken.append(found[0].id)
    assert taken == left


def test_empty_and_delete_take_the_backlog_and_its_jobs(redis):
    queue = Queue("q", connection=redis)
    order = fill_past_the_window(queue, extra=30)
    assert queue.empty() == len(order)
    assert queue.count == 0 and redis.exists(*(f"rq:job:{job_id}" for job_id in order)) == 0
    fill_past_the_window(queue, extra=5)
    queue.delete(delete_jobs=True)
    assert redis.exists(queue.key, queue.window_key, *queue.backlog_keys) == 0
    assert b"rq:queue:q" not in redis.smembers("rq:queues")


def test_requeue_failed_many_requeues_at_each_priority_as_rq_does(redis):
    queue = Queue("q", connection=redis)
    order = fill_past_the_window(queue, extra=10)
    jobs = [queue.fetch_job(job_id) for job_id in order]
    for job in jobs:
        queue.remove(job)
        job.set_status("failed")
        queue.failed_job_registry.add(job, ttl=600, exc_string="ValueError: bad")
    reference = jobs[0]
    queue.failed_job_registry.requeue(reference.id)   # RQ's own requeue, for the fields it writes
    rq_fields = redis.hgetall(reference.key)
    assert redis.ttl(reference.key) > 0, "RQ's requeue keeps the failure TTL"
    queue.remove(reference)
    queue.failed_job_registry.add(reference, ttl=600, exc_string="ValueError: bad")
    reference.set_status("failed")
    ids = queue.failed_job_registry.get_job_ids()
    assert queue.requeue_failed_many(ids + ["gone"]) == len(order)
    assert queue.requeue_failed_many(ids) == 0, "a second pass finds nothing to requeue"
    level = {job.id: priority_of(job) for job in jobs}
    assert queue.get_job_ids() == sorted(ids, key=level.get), "by priority, then in the registry's order"
    assert queue.failed_job_registry.count == 0
    mine = redis.hgetall(reference.key)
    assert {key for key in rq_fields if key != b"enqueued_at"} == {key for key in mine if key != b"enqueued_at"}
    assert {k: v for k, v in mine.items() if k not in (b"enqueued_at", b"last_heartbeat")} == \
        {k: v for k, v in rq_fields.items() if k not in (b"enqueued_at", b"last_heartbeat")}
    assert redis.ttl(reference.key) == -1, "the failed job's expiry is lifted (RQ leaves it)"
    assert redis.ttl(jobs[1].key) == -1
