"""Benchmark stock ``rq.Queue`` against ``rqplus.Queue``: enqueue rate, drain rate, insert cost.

Starts its own private ``redis-server`` (no persistence) on a free loopback port, never the
machine's Redis. Stock and rqplus are measured in the same run and interleaved, because the
machine is shared and noisy: enqueue variants take turns every 100 jobs, insert-cost cases every
10 inserts, and drains alternate whole runs (order reversed every other round). The tables show medians over
rounds and rqplus/stock ratios. Progress goes to stderr, the tables to stdout.

Usage (any working directory; the repo root is put on ``sys.path`` so ``bench.noop`` imports)::

    python bench/bench_priority.py             # full run, about 2-3 minutes
    python bench/bench_priority.py --quick     # smaller sizes, about 30 seconds
    python bench/bench_priority.py --rounds 7  # more rounds against noise

What each row means: bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
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
    lengths: tuple[int, ...]  # queue lengths for the insert-cost tables
    inserts: int  # timed inserts per case, length and round


FULL = Sizes(rounds=5, enqueue_jobs=5000, drain_jobs=2000, lengths=(10, 1000, 100_000), inserts=200)
QUICK = Sizes(rounds=3, enqueue_jobs=2000, drain_jobs=500, lengths=(10, 1000, 100_000), inserts=60)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def interleave(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every variant once per round, forward order on even rounds and reversed on odd ones."""
    results: dict[str, list[float]] = {name: [] for name in variants}
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
        row(f"5 drain, jobs with a dict argument: pickle.loads / safe unpickler***", drain["pickle_args"],
            drain["safe_args"], 0.95),
    ]
    headers = ["jobs/s (median of rounds)", "stock rq", "rqplus", "rqplus/stock", "ratio range", "target"]
    return table(headers, rows) + ("\n* stock column of row 2 = plain stock enqueue (row 1), for reference"
                                   "\n** a second Redis with AOF (everysec, noeviction): rqplus.Queue(durable=True), "
                                   "durability verdict cached 1 s, against stock rq.Queue on it"
                                   "\n*** both columns rqplus: its worker reading job data with RQ's pickle.loads "
                                   "(column 1) or with rqplus.serializers.SafePickleSerializer (column 2, the default);"
                                   " enqueue does not unpickle, so its rate is unchanged by it")


# ---------------------------------------------------------------- insert cost vs queue length


@dataclass(frozen=True)
class Case:
    label: str
    insert: Callable[[str], object]  # inserts one job, given a fresh id; returns the Job or anything
    tail_p9: bool = False  # queue = length x p5 followed by one p9 job
    from_tail: bool = True  # where to LREM the inserted id from afterwards (cheap end)
    stat: str = ""  # commandstats entry giving the server-side time ("eval", "rpush", ...)
    prepare: Callable[[str], object] | None = None  # untimed setup before each insert, given the id


def fill(conn: Redis, length: int) -> None:
    """An empty db with ``length`` priority-5 job ids queued (bare hashes holding only ``priority``)."""
    conn.flushdb()
    pipe = conn.pipeline(transaction=False)
    for start in range(0, length, 5000):
        ids = [f"fill-{i:06d}" for i in range(start, min(length, start + 5000))]
        for job_id in ids:
            pipe.hset(PREFIX + job_id, "priority", 5)
        pipe.rpush(QUEUE_KEY, *ids)
        pipe.execute()
    conn.hset(PREFIX + "tail-p9", "priority", 9)


def command_usec(conn: Redis, stat: str) -> tuple[float, int]:
    """(total usec, calls) that Redis has spent on command ``stat`` so far (INFO commandstats)."""
    entry = conn.info("commandstats").get(f"cmdstat_{stat}", {})
    return float(entry.get("usec", 0)), int(entry.get("calls", 0))


def insert_block(conn: Redis, case: Case, n: int) -> tuple[float, float, int]:
    """``n`` timed inserts, each undone untimed: (client seconds, server usec, server calls)."""
    if case.tail_p9:
        conn.rpush(QUEUE_KEY, "tail-p9")
    length = conn.llen(QUEUE_KEY)
    usec_before, calls_before = command_usec(conn, case.stat)
    total = 0.0
    for i in range(n):
        job_id = f"ins-{i}"
        if case.prepare is not None:
            case.prepare(job_id)
        start = time.perf_counter()
        result = case.insert(job_id)
        total += time.perf_counter() - start
        if isinstance(result, Job):
            job_id = result.id
        pipe = conn.pipeline(transaction=False)
        pipe.lrem(QUEUE_KEY, -1 if case.from_tail else 1, job_id)
        pipe.delete(PREFIX + job_id)
        pipe.execute()
    usec_after, calls_after = command_usec(conn, case.stat)
    assert conn.llen(QUEUE_KEY) == length, "an insert was not undone"
    if case.tail_p9:
        assert conn.rpop(QUEUE_KEY) == b"tail-p9"
    return total, usec_after - usec_before, calls_after - calls_before


def insert_round(conn: Redis, cases: list[Case], n: int, block: int = 10) -> dict[str, tuple[float, float]]:
    """(client µs, server µs) per insert for every case; cases take turns every ``block`` inserts."""
    spent = {case.label: [0.0, 0.0, 0] for case in cases}
    for turn in range(n // block):
        for case in cases[turn % len(cases):] + cases[:turn % len(cases)]:
            client, usec, calls = insert_block(conn, case, block)
            acc = spent[case.label]
            acc[0] += client
            acc[1] += usec
            acc[2] += calls
    return {label: (client / (n // block * block) * 1e6, usec / calls if calls else float("nan"))
            for label, (client, usec, calls) in spent.items()}


class EvalAsEvalsha:
    """Stands in for a connection: ``eval(script, ...)`` is sent as ``EVALSHA`` of the same script."""

    def __init__(self, conn: Redis):
        self.conn = conn

    def eval(self, script: str, numkeys: int, *args: object) -> object:
        sha = hashlib.sha1(script.encode()).hexdigest()
        try:
            return self.conn.evalsha(sha, numkeys, *args)
        except redis.exceptions.NoScriptError:
            self.conn.script_load(script)
            return self.conn.evalsha(sha, numkeys, *args)


def raw_insert(queue: rqplus.Queue, evalsha: bool = False) -> Callable[[str], object]:
    """The Lua insert alone, as ``rqplus.Queue.push_job_id`` sends it (EVAL), or as EVALSHA."""
    if evalsha:
        proxy = EvalAsEvalsha(queue.connection)
        return lambda job_id: queue.push_job_id(job_id, pipeline=proxy)  # type: ignore[arg-type]
    return lambda job_id: queue.push_job_id(job_id)


def with_priority(conn: Redis, priority: int) -> Callable[[str], object]:
    """Untimed setup for a raw insert: the bare job hash holding ``priority``."""
    return lambda job_id: conn.hset(PREFIX + job_id, "priority", priority)


def insert_tables(conn: Redis, sizes: Sizes) -> str:
    stock, plus = rq.Queue(QUEUE, connection=conn), rqplus.Queue(QUEUE, connection=conn)
    enqueue_cases = [
        Case("stock rq enqueue (RPUSH)", lambda _id: stock.enqueue(FUNC), stat="rpush"),
        Case("rqplus default p5 (tail probe + RPUSH)", lambda _id: plus.enqueue(FUNC), stat="eval"),
        Case("rqplus p9 (tail probe + RPUSH)", lambda _id: plus.enqueue(FUNC, priority=9), stat="eval"),
        Case("rqplus p0 urgent (search + LPUSH)", lambda _id: plus.enqueue(FUNC, priority=0),
             from_tail=False, stat="eval"),
        Case("rqplus p6, tail job is p9 (LINSERT walk)", lambda _id: plus.enqueue(FUNC, priority=6),
             tail_p9=True, stat="eval"),
        Case("rqplus default p5, tail job is p9", lambda _id: plus.enqueue(FUNC), tail_p9=True, stat="eval"),
    ]

    raw_cases = [
        Case("RPUSH alone", lambda job_id: conn.rpush(QUEUE_KEY, job_id), stat="rpush"),
        Case("Lua insert p5, EVAL", raw_insert(plus), stat="eval", prepare=with_priority(conn, 5)),
        Case("Lua insert p5, EVALSHA", raw_insert(plus, True), stat="evalsha", prepare=with_priority(conn, 5)),
        Case("Lua insert p0, EVAL", raw_insert(plus), from_tail=False, stat="eval", prepare=with_priority(conn, 0)),
        Case("Lua insert p6, tail job p9, EVAL", raw_insert(plus), tail_p9=True, stat="eval",
             prepare=with_priority(conn, 6)),
    ]

    enq: dict[int, dict[str, tuple[float, float]]] = {}
    raw: dict[int, dict[str, tuple[float, float]]] = {}
    for length in sizes.lengths:
        progress(f"insert cost at length {length:,}: filling, then {sizes.rounds} rounds")
        fill(conn, length)
        cases = [*enqueue_cases, *raw_cases]
        runs: dict[str, list[tuple[float, float]]] = {c.label: [] for c in cases}
        for _ in range(sizes.rounds):
            for label, costs in insert_round(conn, cases, sizes.inserts).items():
                runs[label].append(costs)
        med = {label: (statistics.median(c for c, _ in v), statistics.median(s for _, s in v))
               for label, v in runs.items()}
        enq[length] = {c.label: med[c.label] for c in enqueue_cases}
        raw[length] = {c.label: med[c.label] for c in raw_cases}

    stock_label = enqueue_cases[0].label
    headers = ["µs per enqueue (client, median)"] + [f"len {length:,}" for length in sizes.lengths]
    rows = []
    for case in enqueue_cases:
        cells = [case.label]
        for length in sizes.lengths:
            client, _ = enq[length][case.label]
            ratio = client / enq[length][stock_label][0]
            cells.append(f"{client:.0f}" + ("" if case.label == stock_label else f" ({ratio:.2f}x)"))
        rows.append(cells)
    first = table(headers, rows) + "\n(x) = rqplus / stock at the same queue length; lower is better"

    headers = ["raw insert µs: client / server"] + [f"len {length:,}" for length in sizes.lengths]
    rows = [[case.label] + [f"{raw[length][case.label][0]:.1f} / {raw[length][case.label][1]:.1f}"
                            for length in sizes.lengths] for case in raw_cases]
    second = table(headers, rows) + "\nserver = INFO commandstats usec_per_call of RPUSH / EVAL / EVALSHA"
    return first + "\n\n" + second


def revision() -> str:
    """``git describe --always --dirty`` of the repo, or "?" (rqplus changes often: say what ran)."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def command_line(doc: str, quick_seconds: int,
                 options: Callable[[argparse.ArgumentParser], object] | None = None) -> argparse.Namespace:
    """The benchmarks' shared options (``--quick``, ``--rounds``) and a script's own (added by
    ``options``), parsed; logging quiet but for warnings."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"smaller sizes, about {quick_seconds} seconds")
    parser.add_argument("--rounds", type=int, help="rounds per measurement (default 5, quick 3)")
    if options is not None:
        options(parser)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("rq").setLevel(logging.WARNING)
    return parser.parse_args()


def main() -> None:
    args = command_line(__doc__, 30)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(args.rounds, sizes.enqueue_jobs, sizes.drain_jobs, sizes.lengths, sizes.inserts)
    os.environ["RQPLUS_JOB_MODULES"] = "bench.noop"  # rqplus workers run allow-listed functions only
    # this private Redis has no AOF on purpose: drop rqplus.Worker's start-up warning about it
    logging.getLogger("rq.worker").addFilter(lambda record: "not durable" not in record.getMessage())

    began = time.perf_counter()
    with RedisServer(config={"appendonly": "no"}) as server, RedisServer(config=DURABLE_CONFIG) as durable:
        conn, durable_conn = server.client(), durable.client()
        redis_version = conn.info("server")["redis_version"]
        load = os.getloadavg()[0]
        parts = [rates(conn, durable_conn, sizes), insert_tables(conn, sizes)]
        conn.close()
        durable_conn.close()
    print(f"rqplus {rqplus.__version__} ({revision()}) vs rq {rq.__version__} | redis-server {redis_version}, redis-py "
          f"{redis.__version__}, Python {platform.python_version()} | {os.cpu_count()} cpus, load "
          f"{load:.2f} -> {os.getloadavg()[0]:.2f} | {'quick' if args.quick else 'full'}, {sizes.rounds} rounds, "
          f"{time.perf_counter() - began:.0f} s\n")
    print("\n\n".join(parts))


if __name__ == "__main__":
    main()
