"""Benchmark bulk requeue of failed jobs: rqplus' resumable run against stock rq-dashboard's "Requeue All".

Starts its own private ``redis-server`` (no persistence) on a free loopback port, never the
machine's Redis. Each round fills the failed registry of one queue with N failed jobs (untimed,
priorities 0-9), then requeues them all: once with rq-dashboard's own ``requeue_all`` view
function (``rq.job.requeue_job`` per id, as its button does), once with ``rqplus.requeue`` (a
run: batches of 1,000 through ``rqplus.Queue.requeue_failed_many``, each job at its priority);
the order alternates between rounds. Then, untimed against the requeue, the run's own part
(registry reads, the pipelined field loads and filter checks, no requeue) is measured per job,
and the dashboard's pages are timed with the N failed jobs in place. Progress goes to stderr,
the tables to stdout.

Usage (any working directory)::

    python bench/bench_requeue.py                         # 20,000 failed jobs, 3 rounds
    python bench/bench_requeue.py --requeue-jobs 200000   # the full figure (about 10 minutes)
    python bench/bench_requeue.py --quick                 # 5,000 jobs, 2 rounds

What each row means: bench/README.md.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import rq  # noqa: E402
import rq_dashboard.web as rqd  # noqa: E402
from flask import Flask  # noqa: E402
from redis import Redis  # noqa: E402
from rq.job import Job, JobStatus  # noqa: E402
from rq.registry import FailedJobRegistry  # noqa: E402

import rqplus  # noqa: E402
from bench.bench_priority import command_line, progress, revision, table  # noqa: E402
from rqplus import requeue as runs  # noqa: E402
from rqplus.dashboard import create_app  # noqa: E402
from rqplus.embedded import RedisServer  # noqa: E402

FUNC = "bench.noop.noop"
QUEUE = "bench"
#: Dashboard pages timed with the registry full (path, what it is).
PAGES = [("/", "overview"), ("/failed", "failed jobs, no filter"),
         (f"/failed?queue={QUEUE}&exception=ValueError", "failed jobs, filtered"), ("/requeue", "bulk requeues"),
         (f"/rq/0/data/jobs/{QUEUE}/failed/8/asc/1.json", "rq-dashboard failed list (JSON)"),
         ("/metrics", "metrics")]


def fill(conn: Redis, n: int) -> None:
    """An empty db whose queue has ``n`` failed jobs (priorities 0-9 in turn), as a worker leaves them."""
    conn.flushdb()
    queue = rqplus.Queue(QUEUE, connection=conn)
    conn.sadd(rqplus.Queue.redis_queues_keys, queue.key)
    registry_key = FailedJobRegistry(QUEUE, connection=conn).key
    expires = int(time.time()) + 365 * 86400
    for start in range(0, n, 2000):
        with conn.pipeline(transaction=False) as pipe:
            for index in range(start, min(n, start + 2000)):
                job = Job.create(FUNC, args=(index,), connection=conn, origin=QUEUE, status=JobStatus.FAILED,
                                 meta={"priority": index % 10})
                job.save(pipeline=pipe)
                pipe.hset(job.key, "exc_info", "Traceback ...\nValueError: bench")
                pipe.zadd(registry_key, {job.id: expires})
            pipe.execute()


def stock(conn: Redis) -> int:
    """rq-dashboard 0.9's requeue_all view function itself, in an app context holding our client."""
    app = Flask("bench")
    app.redis_conn = conn
    with app.app_context():
        return rqd.requeue_all.__wrapped__(QUEUE)["count"]


def plus(conn: Redis) -> int:
    """An rqplus run over the whole registry, driven here (as `rqplus requeue` drives it)."""
    run = runs.start(conn, QUEUE)
    runs.claim(conn, run.id, "bench")
    return runs.drive(conn, run.id, "bench").done


def requeue_rate(conn: Redis, n: int, requeue: object) -> float:
    fill(conn, n)
    began = time.perf_counter()
    count = requeue(conn)  # type: ignore[operator]
    seconds = time.perf_counter() - began
    assert count == n and rqplus.Queue(QUEUE, connection=conn).count == n, f"{count} of {n} requeued"
    return n / seconds


def scan_costs(conn: Redis, n: int) -> dict[str, float]:
    """µs per job of a run's own part over a full registry: ZRANGE batches and the pipelined
    loads and checks of ``filters``, without requeueing (what the run adds to requeue_failed_many)."""
    fill(conn, n)
    key = FailedJobRegistry(QUEUE, connection=conn).key
    costs = {}
    for label, filters in (("no filter", runs.Filters(QUEUE)), ("--function", runs.Filters(QUEUE, function=FUNC)),
                           ("--exception", runs.Filters(QUEUE, exception="ValueError"))):
        began = time.perf_counter()
        for start in range(0, n, runs.BATCH_SIZE):
            job_ids, stored = runs._read(conn, key, start, runs.BATCH_SIZE, runs._fields_for(filters))
            groups, matched = runs._select(conn, filters, job_ids, stored)
            assert matched == len(job_ids) == sum(map(len, groups.values()))
        costs[label] = (time.perf_counter() - began) / n * 1e6
    return costs


def page_times(url: str, conn: Redis, n: int) -> list[list[str]]:
    """Milliseconds per dashboard page (median of 3) with ``n`` failed jobs in the registry."""
    fill(conn, n)
    client = create_app(url, auth=False).test_client()
    rows = []
    for path, what in PAGES:
        times = []
        for _ in range(3):
            began = time.perf_counter()
            assert client.get(path).status_code == 200, path
            times.append((time.perf_counter() - began) * 1000)
        rows.append([f"{what} ({path})", f"{statistics.median(times):,.0f}"])
    return rows


def main() -> None:
    args = command_line(__doc__, 60, lambda parser: parser.add_argument(
        "--requeue-jobs", type=int, help="failed jobs per round (default 20,000; quick 5,000)"))
    n = args.requeue_jobs or (5000 if args.quick else 20_000)
    rounds = args.rounds or (2 if args.quick else 3)
    began = time.perf_counter()
    with RedisServer(config={"appendonly": "no"}) as server:
        conn = server.client()
        redis_version = conn.info("server")["redis_version"]
        load = os.getloadavg()[0]
        rates: dict[str, list[float]] = {"stock": [], "plus": []}
        for round_no in range(rounds):
            order = ["stock", "plus"] if round_no % 2 == 0 else ["plus", "stock"]
            for name in order:
                progress(f"round {round_no + 1}/{rounds}: {name} requeue of {n:,} failed jobs")
                rates[name].append(requeue_rate(conn, n, stock if name == "stock" else plus))
        progress("the run's own part (no requeue) and page times")
        costs = scan_costs(conn, n)
        pages = page_times(server.url, conn, n)
        conn.close()
    ratios = [p / s for p, s in zip(rates["plus"], rates["stock"])]
    rows = [[f"6 requeue all, {n:,} failed jobs", f"{statistics.median(rates['stock']):,.0f}",
             f"{statistics.median(rates['plus']):,.0f}", f"{statistics.median(ratios):.2f}",
             f"{min(ratios):.2f}-{max(ratios):.2f}",
             f">=2.00 {'ok' if statistics.median(ratios) >= 2 else 'BELOW'}"]]
    print(f"rqplus {rqplus.__version__} ({revision()}) vs rq {rq.__version__}, rq-dashboard {rqd.rq_dashboard_version} "
          f"| redis-server {redis_version}, redis-py {redis.__version__}, Python {platform.python_version()} | "
          f"{os.cpu_count()} cpus, load {load:.2f} -> {os.getloadavg()[0]:.2f} | {rounds} rounds, "
          f"{time.perf_counter() - began:.0f} s\n")
    print(table(["jobs/s (median of rounds)", "stock rq-dashboard", "rqplus run", "rqplus/stock", "ratio range",
                 "target"], rows))
    print("\n" + table(["run's own part, µs per job (no requeue)", "µs"],
                       [[label, f"{cost:.1f}"] for label, cost in costs.items()]))
    print("\n" + table([f"dashboard page, {n:,} failed jobs", "ms"], pages))


if __name__ == "__main__":
    main()
