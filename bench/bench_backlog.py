"""Priority at scale: stock ``rq.Queue`` against ``rqplus.Queue`` as the backlog grows to 1M jobs.

One private ``redis-server`` (no persistence) on a free loopback port. Each side builds its queue
with ``enqueue_many`` (pipelines of 1,000 jobs, priorities mixed 0-9 for rqplus, none for stock)
from empty to the largest length. At each checkpoint length both sides are measured the same way:

* Redis-side µs per single ``enqueue`` (every command the enqueue sent, from INFO commandstats),
  for rqplus at priority 0, 5, 9 and a mixed stream; the stock figure is its SADD + MULTI/HSET/RPUSH;
* memory per queued job (INFO used_memory over the build);
* the build rate (jobs/s) up to that length; the last build is "a 1M mixed queue" of issue 12.

Then, per side, ``enqueue_many`` of default-priority jobs into an empty queue, in turns (3 rounds).
The sides build in turn (stock first, then rqplus; flushed in between), so the machine's noise
shows as a difference between whole builds: read the ratios, and run it twice.

Usage::

    python bench/bench_backlog.py            # up to 1M jobs, about 6 minutes, ~2 GB of Redis memory
    python bench/bench_backlog.py --quick    # up to 100k, about 1 minute

What each row means: bench/README.md.
"""

from __future__ import annotations

import random
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

BATCH = 1000
SINGLE = 200  # timed single enqueues per case and checkpoint


#: What an enqueue sends at the top level: stock RQ two MULTI/EXEC (SADD; HSETs and RPUSH), rqplus
#: one function call (one script by EVALSHA before rqplus' function library). Commands run inside
#: EXEC, a script or a function are counted in its time, and again on their own.
TOP_LEVEL = ("cmdstat_multi", "cmdstat_exec", "cmdstat_eval", "cmdstat_evalsha", "cmdstat_fcall")


def redis_usec(conn: Redis) -> float:
    """Microseconds Redis has spent on top-level enqueue commands so far (INFO commandstats)."""
    stats = conn.info("commandstats")
    return sum(float(stats[name]["usec"]) for name in TOP_LEVEL if name in stats)


def build(conn: Redis, queue: rq.Queue, upto: int, done: int, priorities: list[int] | None) -> float:
    """Grow ``queue`` from ``done`` to ``upto`` jobs with enqueue_many; returns the seconds taken."""
    started = time.perf_counter()
    for start in range(done, upto, BATCH):
        count = min(BATCH, upto - start)
        if priorities is None:
            datas = [rq.Queue.prepare_data(FUNC, (n,)) for n in range(start, start + count)]
        elif isinstance(queue, rqplus.Queue):
            datas = [rqplus.Queue.prepare_data(FUNC, (n,), priority=priorities[n]) for n in range(start, start + count)]
        else:  # stock jobs carrying the same meta as rqplus' (for the memory comparison)
            datas = [rq.Queue.prepare_data(FUNC, (n,), meta={"priority": priorities[n]})
                     for n in range(start, start + count)]
        queue.enqueue_many(datas)
    return time.perf_counter() - started


def single_cost(conn: Redis, enqueue) -> float:
    """Redis-side µs per call of ``enqueue()`` (SINGLE calls; everything they sent to Redis)."""
    conn.config_resetstat()
    before = redis_usec(conn)
    for _ in range(SINGLE):
        enqueue()
    return (redis_usec(conn) - before) / SINGLE


def side(conn: Redis, label: str, queue: rq.Queue, lengths: list[int], mixed: bool) -> dict:
    """Build ``queue`` through ``lengths``, measuring at each one; returns the figures by length.
    ``mixed``: jobs at random priorities 0-9 (for stock RQ, the same ``meta`` rqplus stores)."""
    conn.flushall()
    rng = random.Random(12)
    priorities = [rng.randrange(10) for _ in range(lengths[-1])] if mixed else None
    base = conn.info("memory")["used_memory"]
    figures: dict[int, dict[str, float]] = {}
    built, seconds = 0, 0.0
    for length in lengths:
        progress(f"{label}: building to {length:,}")
        done = queue.count  # the single enqueues below stay queued: the build goes on from there
        seconds += build(conn, queue, length, done, priorities)
        built += length - done
        memory = (conn.info("memory")["used_memory"] - base) / queue.count
        cases = {"p5": lambda: queue.enqueue(FUNC)}
        if isinstance(queue, rqplus.Queue):
            cases = {"p0": lambda: queue.enqueue(FUNC, priority=0), "p5": lambda: queue.enqueue(FUNC, priority=5),
                     "p9": lambda: queue.enqueue(FUNC, priority=9),
                     "mixed": lambda: queue.enqueue(FUNC, priority=rng.randrange(10))}
        figures[length] = {"build_rate": built / seconds, "memory": memory,
                           **{name: single_cost(conn, enqueue) for name, enqueue in cases.items()}}
    return figures


FAILED = 200_000
PAGES = ("/", "/metrics", "/failed", "/rq/0/data/queues.json", "/rq/0/data/jobs/bench/queued/100/asc/1.json",
         "/rq/0/data/jobs/bench/queued/100/asc/9000.json", "/rq/0/data/jobs/bench/failed/100/dsc/1.json")


def page_times(conn: Redis, url: str, failed: int) -> dict[str, float]:
    """With the queue built, ``failed`` failed jobs added (copies of one failed job's hash, pipelined):
    seconds per dashboard page, median of 3, through Flask's test client logged in."""
    from rqplus.dashboard import Credentials, create_app

    queue = rqplus.Queue("bench", connection=conn)
    fields = conn.hgetall(queue.enqueue(FUNC).key)
    fields.update({b"status": b"failed", b"exc_info": b""})
    for start in range(0, failed, 10_000):
        with conn.pipeline(transaction=False) as pipe:
            ids = [f"failed-{n:07d}" for n in range(start, min(failed, start + 10_000))]
            for job_id in ids:
                pipe.hset(f"rq:job:{job_id}", mapping=fields)
            pipe.zadd(queue.failed_job_registry.key, {job_id: 2_000_000_000 for job_id in ids})
            pipe.execute()
    app = create_app(url, credentials=Credentials("bench", "a bench password"), secret_key="bench")
    client = app.test_client()
    client.get("/login")
    client.post("/login", data={"username": "bench", "password": "a bench password",
                                "_csrf_token": client.get_cookie("_csrf_token").value})
    times = {}
    for page in PAGES:
        samples = []
        for _ in range(3):
            started = time.perf_counter()
            answer = client.get(page)
            samples.append(time.perf_counter() - started)
            assert answer.status_code == 200, (page, answer.status_code)
        times[page] = statistics.median(samples)
    return times


def bulk_default(conn: Redis, n: int, rounds: int) -> dict[str, list[float]]:
    """enqueue_many of ``n`` default-priority jobs into an empty queue: jobs/s per side, in turns."""
    rates: dict[str, list[float]] = {"stock": [], "rqplus": []}
    for round_no in range(rounds):
        order = [("stock", rq.Queue), ("rqplus", rqplus.Queue)]
        for name, cls in order if round_no % 2 == 0 else order[::-1]:
            conn.flushall()
            queue = cls("bulk", connection=conn)
            rates[name].append(n / build(conn, queue, n, 0, None))
    return rates


def main() -> None:
    args = command_line(__doc__, 60)
    lengths = [10, 10_000, 100_000] if args.quick else [10, 10_000, 100_000, 1_000_000]
    rounds = args.rounds or 3
    began = time.perf_counter()
    with RedisServer(config={"appendonly": "no", "save": ""}) as server:
        conn = server.client()
        stock = side(conn, "stock", rq.Queue("bench", connection=conn), lengths, mixed=False)
        stock_meta = side(conn, "stock, same meta", rq.Queue("bench", connection=conn), lengths, mixed=True)
        plus = side(conn, "rqplus", rqplus.Queue("bench", connection=conn), lengths, mixed=True)
        failed = FAILED // 10 if args.quick else FAILED
        progress(f"dashboard pages at {lengths[-1]:,} queued, {failed:,} failed")
        pages = page_times(conn, server.url, failed)
        bulk = bulk_default(conn, 20_000 if args.quick else 100_000, rounds)
        version = conn.info("server")["redis_version"]
    print(f"rqplus {rqplus.__version__} ({revision()}) vs rq {rq.__version__} | redis-server {version} | "
          f"{'quick' if args.quick else 'full'}, {time.perf_counter() - began:.0f} s\n")
    headers = ["Redis µs per enqueue"] + [f"{length:,} queued" for length in lengths]
    rows = [["stock rq (SADD, MULTI: HSET, RPUSH)"] + [f"{stock[n]['p5']:.1f}" for n in lengths]]
    rows += [[f"rqplus {case}"] + [f"{plus[n][case]:.1f}" for n in lengths] for case in ("p0", "p5", "p9", "mixed")]
    print(table(headers, rows) + "\ngoal: rqplus <= 50 µs at every length, every priority\n")
    headers = ["building the queue"] + [f"to {length:,}" for length in lengths]
    rows = [["stock jobs/s (no priority)"] + [f"{stock[n]['build_rate']:,.0f}" for n in lengths],
            ["rqplus jobs/s (mixed 0-9)"] + [f"{plus[n]['build_rate']:,.0f}" for n in lengths],
            ["rqplus / stock"] + [f"{plus[n]['build_rate'] / stock[n]['build_rate']:.2f}" for n in lengths],
            ["stock bytes per job"] + [f"{stock[n]['memory']:.0f}" for n in lengths],
            ["rqplus bytes per job"] + [f"{plus[n]['memory']:.0f}" for n in lengths],
            ["rqplus / stock"] + [f"{plus[n]['memory'] / stock[n]['memory']:.2f}" for n in lengths],
            ["stock with meta={'priority': p}, bytes per job"] + [f"{stock_meta[n]['memory']:.0f}" for n in lengths],
            ["rqplus / stock with the same meta"] + [f"{plus[n]['memory'] / stock_meta[n]['memory']:.2f}"
                                                     for n in lengths]]
    print(table(headers, rows) + "\ngoals: build >= 0.9x stock at 1M; memory <= 1.1x stock\n")
    print(table([f"dashboard page, {lengths[-1]:,} queued, {failed:,} failed", "seconds (median of 3)"],
                [[page, f"{seconds:.3f}"] for page, seconds in pages.items()]) + "\ngoal: < 1 s each\n")
    ratios = [p / s for p, s in zip(bulk["rqplus"], bulk["stock"])]
    print(table(["enqueue_many, default priority", "stock jobs/s", "rqplus jobs/s", "rqplus/stock", "range"],
                [[f"{20_000 if args.quick else 100_000:,} jobs, {rounds} rounds",
                  f"{statistics.median(bulk['stock']):,.0f}", f"{statistics.median(bulk['rqplus']):,.0f}",
                  f"{statistics.median(ratios):.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}"]])
          + "\ngoal: >= 0.95")


if __name__ == "__main__":
    main()
