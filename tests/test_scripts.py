"""rqplus/scripts.py: the ordered-insert Lua script on bare lists (edge cases the Queue rarely hits)."""

from rqplus.scripts import WAKE_TOKENS, priority_insert, reliable_fetch

PREFIX = "rq:job:"


def put(redis, *jobs: tuple[str, int | None]) -> None:
    for job_id, priority in jobs:
        if priority is not None:
            redis.hset(PREFIX + job_id, "priority", priority)


def insert(redis, job_id, **options):
    return priority_insert(redis, "q", "wake", job_id, PREFIX, 5, **options)


def test_insert_into_empty_and_at_each_end(redis):
    put(redis, ("a", 5), ("z", 9), ("u", 0))
    assert insert(redis, "a") == 1
    assert insert(redis, "z") == 2
    assert insert(redis, "u") == 3
    assert redis.lrange("q", 0, -1) == [b"u", b"a", b"z"]


def test_front_mode_when_every_queued_job_is_more_urgent_appends(redis):
    put(redis, ("a", 0), ("b", 1), ("c", 4))
    for job_id in "ab":
        insert(redis, job_id)
    insert(redis, "c", at_front=True)
    assert redis.lrange("q", 0, -1) == [b"a", b"b", b"c"]


def test_hashes_without_priority_and_missing_hashes_count_as_default(redis):
    put(redis, ("p4", 4), ("p6", 6))
    redis.rpush("q", "ghost")  # no hash at all: e.g. deleted job
    insert(redis, "p4")
    insert(redis, "p6")
    assert redis.lrange("q", 0, -1) == [b"p4", b"ghost", b"p6"]


def test_move_and_record_priority(redis):
    put(redis, ("a", 5), ("b", 5))
    insert(redis, "a")
    insert(redis, "b")
    assert insert(redis, "b", move=True, record_priority=0) == 2
    assert redis.lrange("q", 0, -1) == [b"b", b"a"]
    assert redis.hget(PREFIX + "b", "priority") == b"0"
    assert insert(redis, "missing", move=True) == -1
    assert redis.llen("q") == 2


def test_every_insert_rings_the_wake_list_which_stays_bounded(redis):
    for n in range(WAKE_TOKENS + 10):
        insert(redis, f"j{n}")
    assert redis.llen("wake") == WAKE_TOKENS
    assert redis.llen("q") == WAKE_TOKENS + 10


def test_reliable_fetch_takes_the_head_of_the_first_non_empty_queue(redis):
    redis.rpush("b", "b1", "b2")
    redis.rpush("c", "c1")
    keys, intermediates = ["a", "b", "c"], ["a:i", "b:i", "c:i"]
    assert reliable_fetch(redis, keys, intermediates) == (b"b", b"b1")
    assert redis.lrange("b:i", 0, -1) == [b"b1"]
    assert reliable_fetch(redis, keys, intermediates) == (b"b", b"b2")
    assert reliable_fetch(redis, keys, intermediates) == (b"c", b"c1")
    assert reliable_fetch(redis, keys, intermediates) is None
    assert redis.lrange("b:i", 0, -1) == [b"b1", b"b2"]


def test_slots_near_the_tail_and_far_from_it_keep_fifo_order(redis):
    put(redis, *[(f"a{n}", 5) for n in range(300)], *[(f"z{n}", 9) for n in range(3)], ("new", 5), ("mid", 7))
    for job_id in [f"a{n}" for n in range(300)] + ["z0", "z1", "z2"]:
        redis.rpush("q", job_id)
    insert(redis, "new")   # 3 from the tail: the tail is lifted off
    assert redis.lrange("q", -5, -1) == [b"a299", b"new", b"z0", b"z1", b"z2"]
    put(redis, *[(f"b{n}", 9) for n in range(200)])
    for n in range(200):
        redis.rpush("q", f"b{n}")
    insert(redis, "mid")   # 203 from the tail: LINSERT
    ids = redis.lrange("q", 0, -1)
    assert ids.index(b"mid") == 301 and ids[300] == b"new" and len(ids) == 505
