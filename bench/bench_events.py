"""Benchmark ``tasks.logging`` against the peer: one stock RQ job per event.

Events/s from one producer (``log_event`` one call per event, against ``rq.Queue.enqueue`` of one
job per event), to the sink (``drain_events`` in batches with an fsync each, against
``rq.SimpleWorker`` running one job per event that appends one line), and end to end (produce,
then consume). Both sides run in the same process against the same private ``redis-server`` (no
persistence) on a free loopback port, never the machine's Redis. Producers take turns every 100
events; consumers alternate whole runs, in reversed order every other round. The table shows
medians over rounds and ratios (rqplus / peer). Progress goes to stderr, the table to stdout.

Usage (any working directory; the repo root is put on ``sys.path``)::

    python bench/bench_events.py            # full run, about 25 seconds
    python bench/bench_events.py --quick    # about 10 seconds
    python bench/bench_events.py --rounds 7

What each row means: bench/README.md.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import rq  # noqa: E402
from redis import Redis  # noqa: E402

import rqplus  # noqa: E402
from bench.bench_priority import command_line, progress, revision, table  # noqa: E402
from rqplus.embedded import RedisServer  # noqa: E402
from tasks.logging import EVENTS_KEY, drain_events, log_event  # noqa: E402

PEER_FUNC = "bench.bench_events.append_event"  # by path: the worker imports it, the producer never does
QUEUE = "events"
EVENT = "User logged in"
BLOCK = 100  # producers take turns every BLOCK events
PIPELINE = 100  # events per pipeline in the batched-producer row


def append_event(path: str, event: str, fields: dict) -> None:
    """The peer's job: append one JSON line for one event (flushed, not fsynced: the generous side)."""
    with open(path, "a") as sink:
        sink.write(json.dumps({"event": event, "fields": fields}) + "\n")


@dataclass(frozen=True)
class Sizes:
    rounds: int
    events: int  # events per round for rows 1-4 (the peer's consumer is the slow part)
    backlog: int  # events drained by tasks.logging in row 5


FULL = Sizes(rounds=5, events=1000, backlog=50_000)
QUICK = Sizes(rounds=3, events=400, backlog=20_000)


def produce_round(conn: Redis, n: int, peer_sink: Path) -> dict[str, float]:
    """Seconds each producer needs for ``n`` events, one call per event, taking turns every BLOCK events."""
    conn.flushdb()
    peer = rq.Queue(QUEUE, connection=conn)
    variants = {
        "peer": lambda i: peer.enqueue(PEER_FUNC, str(peer_sink), EVENT, {"user_id": f"user_{i}"}),
        "plus": lambda i: log_event(EVENT, connection=conn, user_id=f"user_{i}"),
    }
    elapsed = dict.fromkeys(variants, 0.0)
    for turn, lo in enumerate(range(0, n, BLOCK)):
        for name in list(variants)[turn % 2:] + list(variants)[:turn % 2]:
            start = time.perf_counter()
            for i in range(lo, min(n, lo + BLOCK)):
                variants[name](i)
            elapsed[name] += time.perf_counter() - start
    assert peer.count == n and conn.llen(EVENTS_KEY) == n
    return elapsed


def produce_pipelined(conn: Redis, n: int, per_round_trip: int = PIPELINE) -> float:
    """Seconds for ``n`` ``log_event`` calls sent ``per_round_trip`` per round trip, into an empty Redis."""
    conn.flushdb()
    start = time.perf_counter()
    for lo in range(0, n, per_round_trip):
        with conn.pipeline(transaction=False) as pipe:
            for i in range(lo, min(n, lo + per_round_trip)):
                log_event(EVENT, connection=pipe, user_id=f"user_{i}")
            pipe.execute()
    elapsed = time.perf_counter() - start
    assert conn.llen(EVENTS_KEY) == n
    return elapsed


def consume_plus(conn: Redis, sink: Path, n: int) -> float:
    """Seconds for ``drain_events`` to write ``n`` queued events (fsync per batch of 1,000)."""
    sink.unlink(missing_ok=True)
    start = time.perf_counter()
    written = drain_events(connection=conn, path=sink)
    elapsed = time.perf_counter() - start
    assert written == n and conn.llen(EVENTS_KEY) == 0, f"drained {written} of {n}"
    return elapsed


def consume_peer(conn: Redis, sink: Path, n: int) -> float:
    """Seconds for ``rq.SimpleWorker`` (burst, no fork) to run ``n`` queued peer jobs."""
    sink.unlink(missing_ok=True)
    queue = rq.Queue(QUEUE, connection=conn)
    worker = rq.SimpleWorker([queue], connection=conn)
    start = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - start
    lines = sink.read_text().count("\n")
    assert queue.count == 0 and lines == n, f"peer wrote {lines} of {n} events"
    return elapsed


def measure(conn: Redis, workdir: Path, sizes: Sizes) -> dict[str, list[float]]:
    """Events/s per round for every variant."""
    n = sizes.events
    out: dict[str, list[float]] = {key: [] for key in
                                   ("produce_peer", "produce_plus", "consume_peer", "consume_plus",
                                    "e2e_peer", "e2e_plus", "pipelined", "backlog")}
    peer_sink, plus_sink = workdir / "peer.jsonl", workdir / "plus.jsonl"
    for round_no in range(sizes.rounds):
        progress(f"round {round_no + 1}/{sizes.rounds}: {n} events each side, then a backlog of {sizes.backlog:,}")
        produced = produce_round(conn, n, peer_sink)
        consumers = {"peer": lambda: consume_peer(conn, peer_sink, n), "plus": lambda: consume_plus(conn, plus_sink, n)}
        consumed = {side: consumers[side]() for side in (("peer", "plus") if round_no % 2 == 0 else ("plus", "peer"))}
        for side in ("peer", "plus"):
            out[f"produce_{side}"].append(n / produced[side])
            out[f"consume_{side}"].append(n / consumed[side])
            out[f"e2e_{side}"].append(n / (produced[side] + consumed[side]))
        out["pipelined"].append(n / produce_pipelined(conn, n))
        produce_pipelined(conn, sizes.backlog, per_round_trip=1000)  # the backlog (untimed)
        out["backlog"].append(sizes.backlog / consume_plus(conn, plus_sink, sizes.backlog))
    return out


def report(results: dict[str, list[float]], sizes: Sizes) -> str:
    def row(label: str, peer: list[float] | None, plus: list[float]) -> list[str]:
        if peer is None:
            return [label, "-", f"{statistics.median(plus):,.0f}", "-", "-"]
        ratios = [p / s for p, s in zip(plus, peer)]  # each pair ran in the same round
        return [label, f"{statistics.median(peer):,.0f}", f"{statistics.median(plus):,.0f}",
                f"{statistics.median(ratios):.1f}", f"{min(ratios):.1f}-{max(ratios):.1f}"]

    n = sizes.events
    rows = [
        row(f"1 produce, one call per event ({n})", results["produce_peer"], results["produce_plus"]),
        row(f"2 produce, {PIPELINE} per pipeline ({n})*", results["produce_peer"], results["pipelined"]),
        row(f"3 consume to the sink ({n})", results["consume_peer"], results["consume_plus"]),
        row(f"4 end to end: produce, then consume ({n})", results["e2e_peer"], results["e2e_plus"]),
        row(f"5 consume a backlog ({sizes.backlog:,}, batches of 1,000)", None, results["backlog"]),
    ]
    headers = ["events/s (median of rounds)", "peer: RQ job/event", "tasks.logging", "ratio", "ratio range"]
    return table(headers, rows) + (
        "\nratio = tasks.logging / peer, median of per-round ratios"
        "\npeer = stock rq.Queue.enqueue of one job per event; rq.SimpleWorker runs them, each appending a line "
        "(flushed, not fsynced)"
        "\ntasks.logging = log_event (one RPUSH); drain_events appends batches of 1,000 lines, fsync per batch"
        "\n* peer column of row 2 = row 1's (one enqueue per event), for reference")


def main() -> None:
    args = command_line(__doc__, 10)
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = Sizes(args.rounds, sizes.events, sizes.backlog)

    began = time.perf_counter()
    with (RedisServer(config={"appendonly": "no"}) as server,
          tempfile.TemporaryDirectory(prefix="rqplus-bench-") as workdir):
        conn = server.client()
        redis_version = conn.info("server")["redis_version"]
        load = os.getloadavg()[0]
        results = measure(conn, Path(workdir), sizes)
        conn.close()
    print(f"tasks.logging (rqplus {rqplus.__version__}, {revision()}) vs rq {rq.__version__} | redis-server "
          f"{redis_version}, redis-py {redis.__version__}, Python {platform.python_version()} | {os.cpu_count()} "
          f"cpus, load {load:.2f} -> {os.getloadavg()[0]:.2f} | {'quick' if args.quick else 'full'}, "
          f"{sizes.rounds} rounds, {time.perf_counter() - began:.0f} s | sinks in {tempfile.gettempdir()}\n")
    print(report(results, sizes))


if __name__ == "__main__":
    main()
