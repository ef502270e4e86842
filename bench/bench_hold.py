"""How long one client's call holds Redis: other clients' PING latency while ``enqueue_many`` runs,
and the longest single calls a producer's credential can make (deploy/users.acl's rqplus-producer).

Starts its own private ``redis-server`` (no persistence) on a free loopback port, never the
machine's Redis. A second process sends PING in a loop on its own connection and records each
round trip while the main process works: Redis runs one command at a time, so a PING's latency is
how long it waited for the call ahead of it. Progress goes to stderr, the tables to stdout.

Usage (any working directory)::

    python bench/bench_hold.py             # 100,000 jobs, 3 rounds: about 2 minutes
    python bench/bench_hold.py --quick     # 20,000 jobs, 2 rounds

What each row means: bench/README.md.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import rq  # noqa: E402
from redis import Redis  # noqa: E402

import rqplus  # noqa: E402
from bench.bench_priority import FUNC, command_line, progress, revision, table  # noqa: E402
from rqplus.embedded import RedisServer  # noqa: E402

#: A PING slower than this is counted as held up (the bound rqplus keeps one call of its own under).
HELD_MS = 50.0


def ping_loop(port: int, stop: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    """Child process: PING until ``stop``; puts every round trip's milliseconds on ``out``."""
    client = Redis(port=port)
    client.ping()
    times = []
    while not stop.is_set():
        started = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - started) * 1000)
    out.put(times)


def held(port: int, work) -> tuple[float, list[float]]:
    """Run ``work()`` while a second process pings; (seconds it took, PING milliseconds)."""
    stop, out = multiprocessing.Event(), multiprocessing.Queue()
    pinger = multiprocessing.Process(target=ping_loop, args=(port, stop, out))
    pinger.start()
    time.sleep(0.3)
    started = time.perf_counter()
    work()
    took = time.perf_counter() - started
    time.sleep(0.1)
    stop.set()
    times = out.get(timeout=30)
    pinger.join(10)
    return took, times


def enqueue_many_rows(conn: Redis, port: int, jobs: int, rounds: int) -> list[list[str]]:
    rows = []
    for name, queue_class in (("stock rq.Queue", rq.Queue), ("rqplus.Queue", rqplus.Queue)):
        longest, over, took = [], [], []
        for round_ in range(rounds):
            conn.flushall()
            queue = queue_class("hold", connection=conn)
            datas = [queue_class.prepare_data(FUNC, (n,)) for n in range(jobs)]
            seconds, times = held(port, lambda: queue.enqueue_many(datas))
            assert queue.count == jobs
            longest.append(max(times))
            over.append(sum(t > HELD_MS for t in times))
            took.append(seconds)
            progress(f"{name} round {round_ + 1}: {seconds:.2f} s, longest PING {max(times):.1f} ms")
        rows.append([name, f"{jobs:,}", f"{statistics.median(took):.2f}", f"{statistics.median(longest):.1f}",
                     f"{max(longest):.1f}", f"{statistics.median(over):.0f}"])
    return rows


def producer_rows(conn: Redis, port: int, length: int) -> list[list[str]]:
    """The longest calls a producer may send, each timed alone while a second process pings."""
    from rq.job import Job

    from rqplus.functions import rq_function, rqplus_library
    from rqplus.scripts import MAX_BATCH, WINDOW, enqueue, priority_insert, queue_keys

    conn.flushall()
    queue = rqplus.Queue("hold", connection=conn)
    keys, prefix = queue_keys("hold"), Job.redis_job_namespace_prefix
    jobs = []
    for n in range(MAX_BATCH):
        job = queue.create_job(FUNC, args=(n,), meta={"priority": 5})
        jobs.append(queue._enqueued(job, False))
    empty = next(body for body in rqplus_library().functions.values() if "lpop" in body.body and "prefix" in body.body)
    ids = [f"id{n}" for n in range(length)]
    cases = [
        (f"enqueue, {MAX_BATCH} jobs in one call (MAX_BATCH)",
         lambda: enqueue(conn, keys, "rq:queues", prefix, 5, jobs)),
        (f"priority_insert, {MAX_BATCH} ids at priority 0 into a full window",
         lambda: priority_insert(conn, keys, prefix, 5, [(f"p{n}", 0, False, False) for n in range(MAX_BATCH)])),
        (f"native LRANGE 0 -1 of a {length:,}-id list", lambda: conn.lrange("rq:queue:big", 0, -1)),
        (f"priority_insert after RPUSH of {length:,} ids to the window (counts rebuilt)",
         lambda: priority_insert(conn, queue_keys("big"), prefix, 5, [("x", 0, False, False)])),
        (f"RQ's Queue.empty function on a {length:,}-id list",
         lambda: rqplus_library().call(conn, rq_function(empty.body), ["rq:queue:big"], [])),
        ("native HSET of one 200 MB value", lambda: conn.hset("rq:job:big", "data", b"x" * (200 << 20))),
    ]
    rows = []
    for name, call in cases:
        if "big" in name or "id list" in name or "ids to the window" in name:
            conn.delete("rq:queue:big")
            for start in range(0, length, 10_000):
                conn.rpush("rq:queue:big", *ids[start:start + 10_000])
        if name.startswith("priority_insert, "):
            priority_insert(conn, keys, prefix, 5, [(f"w{n}", 9, False, False) for n in range(WINDOW)])
        seconds, times = held(port, call)
        rows.append([name, f"{seconds * 1000:.0f}", f"{max(times):.0f}"])
        progress(f"{name}: {seconds * 1000:.0f} ms")
    return rows


def main() -> None:
    args = command_line(__doc__, 60, rounds=(3, 2))
    jobs = 20_000 if args.quick else 100_000
    rounds = args.rounds or (2 if args.quick else 3)
    with RedisServer(config={"appendonly": "no"}) as server:
        conn = server.client()
        version = conn.info("server")["redis_version"]
        print(f"rq {rq.__version__}, Redis {version}, rqplus {revision()}, {rounds} rounds")
        print(table(["enqueue_many", "jobs", "seconds", "longest PING ms (median)", "longest PING ms (max)",
                     f"PINGs > {HELD_MS:g} ms"], enqueue_many_rows(conn, server.port, jobs, rounds)))
        if hasattr(rqplus, "functions"):  # rqplus' function library: what a producer may still call
            print()
            print(table(["a producer's call", "ms", "longest PING ms"],
                        producer_rows(conn, server.port, 200_000 if args.quick else 1_000_000)))


if __name__ == "__main__":
    main()
