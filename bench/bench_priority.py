"""Benchmark stock ``rq.Queue`` against ``rqplus.Queue``: enqueue and drain rates.

Starts its own private ``redis-server`` (no persistence) on a free loopback port, never the
machine's Redis. Stock and rqplus are measured in the same run and interleaved, because the
machine is shared and noisy: enqueue variants take turns every 100 jobs, and drains alternate whole
runs (order reversed every other round). Insert cost against the backlog's length: bench_backlog.py. The tables show medians over
rounds and rqplus/stock ratios. Progress goes to stderr, the tables to stdout.

Usage (any working directory; the repo root is put on ``sys.path`` so ``bench.noop`` imports)::

    python bench/bench_priority.py             # full run, about 2-3 minutes
    python bench/bench_priority.py --quick     # smaller sizes, about 30 seconds
    python bench/bench_priority.py --rounds 7  # more rounds against noise

What each row means: bench/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TypeVar
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import rq  # noqa: E402
from redis import Redis  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.serializers import DefaultSerializer  # noqa: E402

import rqplus  # noqa: E402
from rqplus.embedded import DURABLE_CONFIG, RedisServer  # noqa: E402

FUNC = "bench.noop.noop"  # by path: enqueueing never imports it, the worker does
PREFIX = Job.redis_job_namespace_prefix  # "rq:job:"
QUEUE = "bench"
QUEUE_KEY = rq.Queue.redis_queue_namespace_prefix + QUEUE
T = TypeVar("T")


class PlusSimpleWorker(rq.SimpleWorker, rqplus.Worker):
    """``rqplus.Worker`` (its queue class and scheduler) running jobs in-process like ``rq.SimpleWorker``."""


assert PlusSimpleWorker.queue_class is rqplus.Queue
assert PlusSimpleWorker.execute_job is rq.SimpleWorker.execute_job


class PlusPickleWorker(PlusSimpleWorker):
    """``PlusSimpleWorker`` reading job data with RQ's ``pickle.loads``: the safe unpickler off, for its cost."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.serializer = DefaultSerializer
        for queue in self.queues:
            queue.serializer = DefaultSerializer


#: Arguments of the jobs of the unpickler row: what a real job carries (text, numbers, a date, money).
ARGS = ({"user": "a@example.com", "amount": Decimal("12.50"), "when": datetime(2026, 11, 30, tzinfo=timezone.utc),
         "items": [1, 2, 3], "tags": {"x", "y"}, "id": UUID(int=7)},)


@dataclass(frozen=True)
class Sizes:
    rounds: int
    enqueue_jobs: int  # jobs per enqueue-rate run
    drain_jobs: int  # jobs per drain-rate run


FULL = Sizes(rounds=5, enqueue_jobs=5000, drain_jobs=2000)
QUICK = Sizes(rounds=3, enqueue_jobs=2000, drain_jobs=500)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def interleave(variants: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Run every variant once per round, forward order on even rounds and reversed on odd ones."""
    results: dict[str, list[T]] = {name: [] for name in variants}
    names = list(variants)
    for round_no in range(rounds):
        for name in names if round_no % 2 == 0 else names[::-1]:
            results[name].append(variants[name]())
    return results


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, rows)])


# ---------------------------------------------------------------- rates: enqueue and drain


def enqueue_round(conn: Redis, n: int, variants: dict[str, tuple[rq.Queue, list[int] | None]],
                  block: int = 100) -> dict[str, float]:
    """Jobs/s of each enqueue variant (a queue, and the priorities to enqueue at or None for none),
    each filling its own empty queue with ``n`` jobs.

    The variants take turns every ``block`` jobs (rotating who goes first), so all of them see the
    same machine load; each one's time is summed over its blocks.
    """
    conn.flushdb()
    names = list(variants)
    elapsed = dict.fromkeys(names, 0.0)
    for turn, lo in enumerate(range(0, n, block)):
        hi = min(n, lo + block)
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            queue, priorities = variants[name]
            start = time.perf_counter()
            if priorities is None:
                for _ in range(lo, hi):
                    queue.enqueue(FUNC)
            else:
                for priority in priorities[lo:hi]:
                    queue.enqueue(FUNC, priority=priority)
            elapsed[name] += time.perf_counter() - start
    assert all(queue.count == n for queue, _ in variants.values())
    return {name: n / seconds for name, seconds in elapsed.items()}


def enqueue_rates(conn: Redis, n: int, rounds: int, variants: dict[str, tuple[type[rq.Queue], dict, list[int] | None]]
                  ) -> dict[str, list[float]]:
    """``rounds`` enqueue rounds of ``variants`` (name -> queue class, its options, priorities)."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        queues = {name: (cls(f"{QUEUE}-{name}", connection=conn, **options), priorities)
                  for name, (cls, options, priorities) in variants.items()}
        for name, rate in enqueue_round(conn, n, queues).items():
            results[name].append(rate)
    return results


def drain_rate(conn: Redis, queue_class: type[rq.Queue], worker_class: type[rq.SimpleWorker], n: int,
               args: tuple = ()) -> float:
    """Jobs/s for a burst ``SimpleWorker`` draining ``n`` no-op jobs (given ``args``) enqueued by ``queue_class``."""
    conn.flushdb()
    queue = queue_class(QUEUE, connection=conn)
    for start in range(0, n, 500):  # fill (untimed)
        queue.enqueue_many([queue_class.prepare_data(FUNC, args) for _ in range(min(500, n - start))])
    worker = worker_class([queue], connection=conn)
    start_time = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - start_time
    finished, failed = queue.finished_job_registry.count, queue.failed_job_registry.count
    assert queue.count == 0 and finished == n, f"drain: {finished} of {n} jobs finished, {failed} failed"
    return n / elapsed


def rates(conn: Redis, durable_conn: Redis, sizes: Sizes) -> str:
    n, rounds = sizes.enqueue_jobs, sizes.rounds
    mixed = [random.Random(42).randrange(10) for _ in range(n)]
    progress(f"enqueue: {rounds} rounds x 3 variants x {n} jobs, taking turns every 100 jobs")
    enq = enqueue_rates(conn, n, rounds, {"stock": (rq.Queue, {}, None), "plus": (rqplus.Queue, {}, None),
                                          "plus_mixed": (rqplus.Queue, {}, mixed)})
    progress(f"enqueue on an AOF Redis: {rounds} rounds x 2 variants x {n} jobs")
    durable = enqueue_rates(durable_conn, n, rounds, {"stock": (rq.Queue, {}, None),
                                                      "plus": (rqplus.Queue, {"durable": True}, None)})
    progress(f"drain: {rounds} rounds x 4 runs of {sizes.drain_jobs} jobs")
    drain = interleave(
        {
            "stock": lambda: drain_rate(conn, rq.Queue, rq.SimpleWorker, sizes.drain_jobs),
            "plus": lambda: drain_rate(conn, rqplus.Queue, PlusSimpleWorker, sizes.drain_jobs),
            "pickle_args": lambda: drain_rate(conn, rqplus.Queue, PlusPickleWorker, sizes.drain_jobs, ARGS),
            "safe_args": lambda: drain_rate(conn, rqplus.Queue, PlusSimpleWorker, sizes.drain_jobs, ARGS),
        },
        rounds,
    )

    def row(label: str, stock: list[float], plus: list[float], target: float | None) -> list[str]:
        # ratio: median of the per-round ratios (each pair ran back to back), with their range
        ratios = [p / s for p, s in zip(plus, stock)]
        ratio = statistics.median(ratios)
        verdict = "" if target is None else f">={target:.2f} {'ok' if ratio >= target else 'BELOW'}"
        return [label, f"{statistics.median(stock):,.0f}", f"{statistics.median(plus):,.0f}",
                f"{ratio:.3f}", f"{min(ratios):.2f}-{max(ratios):.2f}", verdict]

    rows = [
        row(f"1 enqueue, default priority ({n} jobs)", enq["stock"], enq["plus"], 0.95),
        row(f"2 enqueue, random priority 0-9 ({n} jobs)*", enq["stock"], enq["plus_mixed"], None),
        row(f"3 drain, SimpleWorker burst ({sizes.drain_jobs} no-op jobs)", drain["stock"], drain["plus"], 0.95),
        row(f"4 enqueue, durable=True, AOF Redis ({n} jobs)**", durable["stock"], durable["plus"], None),
        row("5 drain, jobs with a dict argument: pickle.loads / safe unpickler***", drain["pickle_args"],
            drain["safe_args"], 0.95),
    ]
    headers = ["jobs/s (median of rounds)", "stock rq", "rqplus", "rqplus/stock", "ratio range", "target"]
    return table(headers, rows) + ("\n* stock column of row 2 = plain stock enqueue (row 1), for reference"
                                   "\n** a second Redis with AOF (everysec, noeviction): rqplus.Queue(durable=True), "
                                   "durability verdict cached 1 s, against stock rq.Queue on it"
                                   "\n*** both columns rqplus: its worker reading job data with RQ's pickle.loads "
                                   "(column 1) or with rqplus.serializers.SafePickleSerializer (column 2, the default);"
                                   " enqueue does not unpickle, so its rate is unchanged by it")


def revision() -> str:
    """``git describe --always --dirty`` of the repo, or "?" (rqplus changes often: say what ran)."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def command_line(doc: str, quick_seconds: int,
                 options: Callable[[argparse.ArgumentParser], object] | None = None,
                 rounds: tuple[int, int] = (5, 3)) -> argparse.Namespace:
    """The benchmarks' shared options (``--quick``, ``--rounds`` alias ``--runs``, whose defaults
    full and quick are ``rounds``) and a script's own (added by ``options``), parsed; logging quiet
    but for warnings."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller sizes, about {quick_seconds} seconds")
    parser.add_argument("--rounds", "--runs", type=int,
                        help=f"rounds per measurement (default {rounds[0]}, quick {rounds[1]})")
    if options is not None:
        options(parser)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("rq").setLevel(logging.WARNING)
    return parser.parse_args()


def main() -> None:
    args = command_line(__doc__, 30)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(args.rounds, sizes.enqueue_jobs, sizes.drain_jobs)
    os.environ["RQPLUS_JOB_MODULES"] = "bench.noop"  # rqplus workers run allow-listed functions only
    # this private Redis has no AOF on purpose: drop rqplus.Worker's start-up warning about it
    logging.getLogger("rq.worker").addFilter(lambda record: "not durable" not in record.getMessage())

    began = time.perf_counter()
    with RedisServer(config={"appendonly": "no"}) as server, RedisServer(config=DURABLE_CONFIG) as durable:
        conn, durable_conn = server.client(), durable.client()
        redis_version = conn.info("server")["redis_version"]
        load = os.getloadavg()[0]
        parts = [rates(conn, durable_conn, sizes)]
        conn.close()
        durable_conn.close()
    report(f"rq {rq.__version__}", redis_version, load, args.quick, sizes.rounds, began, parts)


def report(against: str, redis_version: str, load: float, quick: bool, rounds: int, began: float,
           parts: list[str]) -> None:
    """Print the header line (versions, git revision, machine, load before and after, run kind)
    and the tables, as every bench script does.

    Usage: ``report("rq 3.0.0", "7.0.15", load, args.quick, sizes.rounds, began, [table])``
    """
    print(f"rqplus {rqplus.__version__} ({revision()}) vs {against} | redis-server {redis_version}, redis-py "
          f"{redis.__version__}, Python {platform.python_version()} | {os.cpu_count()} cpus, load "
          f"{load:.2f} -> {os.getloadavg()[0]:.2f} | {'quick' if quick else 'full'}, {rounds} rounds, "
          f"{time.perf_counter() - began:.0f} s\n")
    print("\n\n".join(parts))


if __name__ == "__main__":
    main()
