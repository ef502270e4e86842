"""rqplus/scripts.py: the window + backlog functions on bare keys (edge cases the Queue rarely hits)."""

import random

from rqplus.priority import LEVELS, backlog_key
from rqplus.scripts import WAKE_TOKENS, WINDOW, fetch_keys, priority_insert, queue_keys, refill, reliable_fetch

PREFIX = "rq:job:"
KEYS = queue_keys("q")


def queued(redis, *job_ids: str) -> None:
    """Job hashes for bare ids: the refill drops ids whose job is gone."""
    with redis.pipeline() as pipe:
        for job_id in job_ids:
            pipe.hset(PREFIX + job_id, "status", "queued")
        pipe.execute()


def insert(redis, *jobs: tuple[str, int], at_front: bool = False, move: bool = False) -> int:
    queued(redis, *(job_id for job_id, _ in jobs))
    return priority_insert(redis, KEYS, PREFIX, 5,
                           [(job_id, priority, at_front, move) for job_id, priority in jobs])


def window(redis) -> list[bytes]:
    return redis.lrange(KEYS.list, 0, -1)


def fetch(redis, *names: str) -> bytes | None:
    queues = [fetch_keys(name, f"rq:queue:{name}", f"rq:queue:{name}:intermediate") for name in names or ("q",)]
    result = reliable_fetch(redis, queues, PREFIX)
    return None if result is None else result[1]


def test_insert_into_empty_and_at_each_end(redis):
    assert insert(redis, ("a", 5), ("z", 9), ("u", 0)) == 3
    assert window(redis) == [b"u", b"a", b"z"]
    assert redis.hgetall(KEYS.window) == {b"u": b"0", b"a": b"5", b"z": b"9"}


def test_front_mode_goes_before_its_own_priority_only(redis):
    insert(redis, ("a", 0), ("b", 4), ("c", 4))
    insert(redis, ("f", 4), at_front=True)
    insert(redis, ("g", 9), at_front=True)
    assert window(redis) == [b"a", b"f", b"b", b"c", b"g"]


def test_ids_pushed_by_stock_rq_count_as_default(redis):
    insert(redis, ("p4", 4))
    redis.rpush(KEYS.list, "stock")
    insert(redis, ("p6", 6), ("p5", 5))
    assert window(redis) == [b"p4", b"stock", b"p5", b"p6"]


def test_move_resorts_an_id_and_skips_one_not_in_the_window(redis):
    insert(redis, ("a", 5), ("b", 5))
    assert insert(redis, ("b", 0), move=True) == 1
    assert window(redis) == [b"b", b"a"]
    assert insert(redis, ("missing", 0), move=True) == 0
    assert redis.llen(KEYS.list) == 2


def test_every_insert_rings_the_wake_list_which_stays_bounded(redis):
    for n in range(WAKE_TOKENS + 10):
        insert(redis, (f"j{n}", 5))
    assert redis.llen(KEYS.wake) == WAKE_TOKENS
    assert redis.llen(KEYS.list) == WAKE_TOKENS + 10


def test_reliable_fetch_takes_the_head_of_the_first_non_empty_queue(redis):
    queued(redis, "b1", "b2", "c1")
    redis.rpush("rq:queue:b", "b1", "b2")
    redis.rpush("rq:queue:c", "c1")
    assert fetch(redis, "a", "b", "c") == b"b1"
    assert redis.lrange("rq:queue:b:intermediate", 0, -1) == [b"b1"]
    assert fetch(redis, "a", "b", "c") == b"b2"
    assert fetch(redis, "a", "b", "c") == b"c1"
    assert fetch(redis, "a", "b", "c") is None
    assert redis.lrange("rq:queue:b:intermediate", 0, -1) == [b"b1", b"b2"]


def test_the_window_holds_the_most_urgent_jobs_and_the_rest_wait_per_level(redis):
    insert(redis, *[(f"late{n}", 9) for n in range(WINDOW)])
    insert(redis, ("more9", 9), ("mid", 7))
    assert redis.llen(KEYS.list) == WINDOW
    assert window(redis)[0] == b"mid", "a more urgent job enters the window"
    assert redis.lrange(backlog_key("q", 9), 0, -1) == [f"late{WINDOW - 1}".encode(), b"more9"], \
        "the window's last job moved to the front of its level, ahead of later ones"
    assert redis.hlen(KEYS.window) == WINDOW


def test_the_window_is_refilled_by_each_fetch_and_after_a_plain_lmove(redis):
    insert(redis, *[(f"j{n}", n % 10) for n in range(WINDOW + 5)])
    assert redis.llen(KEYS.list) == WINDOW and sum(redis.llen(backlog_key("q", level)) for level in LEVELS) == 5
    fetch(redis)
    assert redis.llen(KEYS.list) == WINDOW
    job_id = redis.lmove(KEYS.list, "rq:queue:q:intermediate")  # as RQ's BLMOVE: no refill yet
    assert redis.llen(KEYS.list) == WINDOW - 1
    assert refill(redis, KEYS, PREFIX, job_id) == WINDOW
    assert not redis.hexists(KEYS.window, job_id)


def test_a_stock_worker_emptying_the_window_leaves_the_backlog_for_the_next_fetch(redis):
    insert(redis, *[(f"j{n}", 5) for n in range(WINDOW + 3)])
    while redis.lpop(KEYS.list):  # stock RQ pops and refills nothing
        pass
    assert fetch(redis) == f"j{WINDOW}".encode()
    assert window(redis) == [f"j{WINDOW + 1}".encode(), f"j{WINDOW + 2}".encode()]


def test_cancelled_and_deleted_jobs_are_dropped_on_their_way_into_the_window(redis):
    insert(redis, *[(f"j{n}", 5) for n in range(WINDOW + 3)])
    redis.hset(f"{PREFIX}j{WINDOW}", "status", "canceled")
    redis.delete(f"{PREFIX}j{WINDOW + 1}")
    redis.set(f"{PREFIX}j{WINDOW + 2}", "corrupt")  # kept: the worker quarantines it
    redis.delete(KEYS.list)
    assert fetch(redis) == f"j{WINDOW + 2}".encode()


def test_stale_window_priorities_are_tidied(redis):
    insert(redis, *[(f"j{n}", 5) for n in range(4 * WINDOW)])
    sizes = []
    for round in range(3):
        while redis.lpop(KEYS.list):  # stock pops leave their priorities behind
            pass
        insert(redis, (f"new{round}", 0))  # refills the window
        sizes.append(redis.hlen(KEYS.window) - redis.llen(KEYS.list))
    assert sizes == [WINDOW, 2 * WINDOW, 0], "stale entries are dropped once the hash holds over 2 windows"


def test_order_across_the_window_boundary_matches_a_model(redis):
    """Random inserts (back and front), fetches and stock RQ pops (which refill nothing and leave
    the window's counts stale) across a window boundary: jobs leave most urgent first, FIFO within a
    level, at_front first within its level, as a plain sorted list would."""
    rng = random.Random(12)
    model: list[tuple[int, str]] = []
    for step in range(6 * WINDOW):
        if rng.random() < 0.05 and model:
            popped = redis.lpop(KEYS.list)  # as a stock `rq worker`: None when the window ran dry
            if popped is not None:
                assert popped.decode() == model.pop(0)[1], f"step {step}"
            continue
        if rng.random() < 0.3 and model:
            assert fetch(redis).decode() == model.pop(0)[1], f"step {step}"
            continue
        job_id, priority, front = f"j{step}", rng.choice([0, 3, 5, 5, 5, 9]), rng.random() < 0.05
        insert(redis, (job_id, priority), at_front=front)
        slot = next((i for i, (p, _) in enumerate(model) if (p >= priority if front else p > priority)), len(model))
        model.insert(slot, (priority, job_id))
    assert len(model) > WINDOW, "the run must end with a backlog"
    rest = []
    while (job_id := fetch(redis)) is not None:
        rest.append(job_id.decode())
    assert rest == [job_id for _, job_id in model]
