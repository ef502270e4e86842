"""Benchmark worker processes: stock RQ and rqplus workers against dramatiq and huey.

Per contestant, one worker process started by this script (its own process group, killed after
each measurement): no-op jobs/s, Redis commands per job, enqueue->start latency on an idle worker
(median, p95), and jobs/s of 50 ms I/O-bound jobs at concurrency 10 / 100 / 1000. The jobs are
``bench/jobs.py``'s; the peers' wrappers are ``bench/peer_dramatiq.py`` and ``bench/peer_huey.py``.
Two private ``redis-server``\\ s on free loopback ports, never the machine's Redis: the one under
test, and a *clock* the marker jobs write their ``time.time()`` to, so that the first counts only
what the worker sends. Contestants alternate whole measurements, in reversed order every other
round; the tables show medians over rounds. Progress goes to stderr, the tables to stdout.

The peers live in their own venv, ``bench/.venv-peers`` (rqplus editable plus
``bench/requirements-peers.txt``), never in rqplus's dependencies: the script creates or updates it
on first use, then runs itself again under it. Linux only (``/proc``, process groups).

Usage (any working directory, any Python >= 3.11)::

    python3 bench/bench_workers.py             # full run, about 5-7 minutes
    python3 bench/bench_workers.py --quick     # smaller sizes, about 1.5-2 minutes
    python3 bench/bench_workers.py --rounds 5  # more rounds against noise

What each row means: bench/README.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS_VENV = ROOT / "bench" / ".venv-peers"
PEERS_REQUIREMENTS = ROOT / "bench" / "requirements-peers.txt"
NO_PEERS_VENV = "--no-peers-venv"


def peers_python() -> Path:
    """The python of ``bench/.venv-peers``, created first, and (re)installed when the pins or
    pyproject.toml are newer than its last install."""
    python = PEERS_VENV / "bin" / "python"
    stamp = PEERS_VENV / ".installed"
    if not python.exists():
        setup_step(f"creating {PEERS_VENV}", [sys.executable, "-m", "venv", str(PEERS_VENV)])
    pins = [PEERS_REQUIREMENTS, ROOT / "pyproject.toml"]
    if not stamp.exists() or any(pin.stat().st_mtime > stamp.stat().st_mtime for pin in pins):
        setup_step(f"installing rqplus (editable) and {PEERS_REQUIREMENTS.name} into {PEERS_VENV}",
                   [str(python), "-m", "pip", "install", "-q", "-e", str(ROOT), "-r", str(PEERS_REQUIREMENTS)])
        stamp.touch()
    return python


def setup_step(what: str, command: list[str]) -> None:
    """Say ``what``, run ``command``; stop the script if it fails."""
    print(f"[bench] {what}", file=sys.stderr, flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"[bench] {what} failed (output above); {NO_PEERS_VENV} measures without the peers")


if __name__ == "__main__" and NO_PEERS_VENV not in sys.argv and Path(sys.prefix).resolve() != PEERS_VENV.resolve():
    python = peers_python()
    os.execv(python, [str(python), __file__, *sys.argv[1:]])  # does not return

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Protocol  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import rq  # noqa: E402
from redis import Redis  # noqa: E402
from rq.utils import import_attribute  # noqa: E402

from bench.bench_priority import command_line, interleave, progress, report, table  # noqa: E402
from bench.jobs import CLOCK_URL_ENV, SLEEP  # noqa: E402
from rqplus.embedded import RedisServer  # noqa: E402

QUEUE = "bench"
REDIS_URL_ENV = "BENCH_REDIS_URL"  # the Redis under test, for the peers' modules
FIRST, LAST, SAMPLE = "bench:first", "bench:last", "bench:sample"  # lists in the clock Redis
IO_CONCURRENCY = (10, 100, 1000)
IDLE_GAP = (0.03, 0.13)  # seconds an idle worker waits before each latency sample (uniform)
SAMPLE_TIMEOUT = 5.0  # seconds for one latency sample
SETTLE = 0.1  # seconds after the last mark before counting commands: the last jobs' bookkeeping
STARTUP = 20.0  # seconds a worker process may take to start, on top of its drain's allowance
NOOP_FLOOR = 50  # jobs/s: a no-op drain slower than this is a timeout
IO_FLOOR = 0.05  # share of the ideal rate: an I/O-bound drain slower than this is a timeout


@dataclass(frozen=True)
class Sizes:
    rounds: int
    noop_jobs: int  # jobs per no-op drain
    fork_jobs: int  # jobs per no-op drain of the fork-per-job workers (about 60 jobs/s here: fewer suffice)
    samples: int  # latency samples per contestant and round
    sample_seconds: float  # at most this long per contestant and round for them
    io_seconds: float  # an I/O-bound drain lasts this long at the ideal rate,
    io_max_jobs: int  # but has at most this many jobs

    def io_jobs(self, concurrency: int) -> int:
        return max(10, min(self.io_max_jobs, round(concurrency / SLEEP * self.io_seconds)))


FULL = Sizes(rounds=3, noop_jobs=2000, fork_jobs=500, samples=30, sample_seconds=10, io_seconds=1.5,
             io_max_jobs=20_000)
QUICK = Sizes(rounds=2, noop_jobs=500, fork_jobs=200, samples=15, sample_seconds=5, io_seconds=0.5,
              io_max_jobs=5_000)


def executable(name: str) -> str:
    """A console script of this interpreter's environment (``rq``, ``dramatiq``, ``huey_consumer``)."""
    return str(Path(sys.executable).parent / name)


# ---------------------------------------------------------------- contestants


class Side(Protocol):
    """How to start one framework's worker process and give it jobs."""

    def command(self, concurrency: int) -> list[str]:
        """The worker's command line, running ``concurrency`` jobs at once where it has the setting."""

    def fill(self, work: str, n: int) -> None:
        """Enqueue ``n`` jobs: ``first`` (marks the start), ``n - 2`` of ``work``, ``last`` (marks the end)."""

    def send_stamp(self) -> None:
        """Enqueue one ``stamp`` job (a latency sample)."""


class RQSide:
    """Stock RQ or rqplus: ``rq worker -w <worker class> --queue-class <queue class>``, jobs by path."""

    def __init__(self, conn: Redis, url: str, worker_class: str, queue_class: str = "rq.Queue",
                 asynchronous: bool = False) -> None:
        self.url, self.worker_class, self.queue_class = url, worker_class, queue_class
        self.queue: rq.Queue = import_attribute(queue_class)(QUEUE, connection=conn)
        self.prefix = "bench.jobs.async_" if asynchronous else "bench.jobs."  # AsyncWorker: the async twins

    def command(self, concurrency: int) -> list[str]:
        # concurrency: RQPLUS_CONCURRENCY in the environment (see Bench.env)
        return [executable("rq"), "worker", "--quiet", "--url", self.url, "--worker-class", self.worker_class,
                "--queue-class", self.queue_class, QUEUE]

    def fill(self, work: str, n: int) -> None:
        calls = [(self.prefix + "first", (FIRST, work)), *[(self.prefix + work, ())] * (n - 2),
                 (self.prefix + "last", (LAST, work))]
        for lo in range(0, n, 1000):
            self.queue.enqueue_many([self.queue.prepare_data(func, args) for func, args in calls[lo:lo + 1000]])

    def send_stamp(self) -> None:
        self.queue.enqueue(self.prefix + "stamp", SAMPLE)


class DramatiqSide:
    """dramatiq with its Redis broker: ``dramatiq bench.peer_dramatiq -p 1 -t <threads>``."""

    def __init__(self) -> None:
        self.actors = importlib.import_module("bench.peer_dramatiq").ACTORS

    def command(self, concurrency: int) -> list[str]:
        return [executable("dramatiq"), "bench.peer_dramatiq", "--processes", "1", "--threads", str(concurrency)]

    def fill(self, work: str, n: int) -> None:
        self.actors["first"].send(FIRST, work)
        for _ in range(n - 2):
            self.actors[work].send()
        self.actors["last"].send(LAST, work)

    def send_stamp(self) -> None:
        self.actors["stamp"].send(SAMPLE)


class HueySide:
    """huey's ``RedisHuey``: ``huey_consumer bench.peer_huey.huey -w <threads> -k thread``."""

    def __init__(self) -> None:
        self.tasks = importlib.import_module("bench.peer_huey").TASKS

    def command(self, concurrency: int) -> list[str]:
        return [executable("huey_consumer"), "bench.peer_huey.huey", "--workers", str(concurrency),
                "--worker-type", "thread", "--quiet"]

    def fill(self, work: str, n: int) -> None:
        self.tasks["first"](FIRST, work)
        for _ in range(n - 2):
            self.tasks[work]()
        self.tasks["last"](LAST, work)

    def send_stamp(self) -> None:
        self.tasks["stamp"](SAMPLE)


@dataclass
class Contestant:
    """One row: a worker kind. ``concurrency`` is its no-op setting; 1 means one job at a time, with
    no setting to change it (the I/O-bound table then shows it at concurrency 1 only)."""

    name: str
    make_side: Callable[[], Side]
    concurrency: int = 1
    forks: bool = False  # a work-horse process per job
    missing: str | None = None  # why it cannot run: its rows say so
    _side: Side | None = field(default=None, repr=False)

    @property
    def side(self) -> Side:
        if self._side is None:
            self._side = self.make_side()
        return self._side


def contestants(conn: Redis, url: str) -> list[Contestant]:
    """Every row, those that cannot run (not importable, not installed) with the reason."""
    def rq_side(worker: str, queue: str = "rq.Queue", asynchronous: bool = False) -> Callable[[], Side]:
        return lambda: RQSide(conn, url, worker, queue, asynchronous)

    rows = [
        Contestant("rq Worker (fork per job)", rq_side("rq.Worker"), forks=True),
        Contestant("rq SimpleWorker", rq_side("rq.SimpleWorker")),
        Contestant("rqplus Worker (fork per job)", rq_side("rqplus.Worker", "rqplus.Queue"), forks=True),
        Contestant("rqplus ThreadWorker", rq_side("rqplus.ThreadWorker", "rqplus.Queue"), concurrency=8),
        Contestant("rqplus AsyncWorker", rq_side("rqplus.AsyncWorker", "rqplus.Queue", asynchronous=True),
                   concurrency=100),
        Contestant("dramatiq (Redis broker)", DramatiqSide, concurrency=8),
        Contestant("huey (RedisHuey)", HueySide, concurrency=8),
    ]
    for row in rows:
        if row.missing is None:
            try:
                row.side  # noqa: B018  # imports the peer's module now
            except ImportError as error:
                row.missing = f"n/a (not installed: {error.name})"
    return rows


# ---------------------------------------------------------------- worker processes


class Failed(Exception):
    """A measurement that gave no number; its text goes into the table (``timeout``, ``exited 1``)."""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process``, its process group and every process below it (rq's work-horses run in
    sessions of their own, so the group alone could miss one)."""
    below = descendants(process.pid)  # before the kill: orphans would be re-parented
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


@contextlib.contextmanager
def worker_process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``command`` running in its own process group (output appended to ``log``), killed on exit."""
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield process
        finally:
            kill_tree(process)


def log_tail(log: Path, lines: int = 3) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:]) or "(empty log)"
    return "(no log)"


# ---------------------------------------------------------------- measuring


@dataclass
class Run:
    """One drain: jobs/s from the first job's start to the last one's end, the Redis commands the
    worker sent meanwhile (by name), and the latency samples taken on it afterwards (seconds)."""

    jobs: int
    rate: float
    commands: Counter[str]
    latencies: list[float] = field(default_factory=list)
    latency_failure: str | None = None


Outcome = Run | str  # a drain, or why there is none


@dataclass
class Bench:
    """The Redis under test, the clock Redis, and where worker logs go."""

    conn: Redis
    url: str
    clock: Redis
    logs: Path

    def env(self, concurrency: int) -> dict[str, str]:
        """A worker's environment: both Redis URLs, the job module allowed, the concurrency."""
        env = dict(os.environ)
        env.update({"RQPLUS_CONCURRENCY": str(concurrency), "RQPLUS_JOB_MODULES": "bench.jobs",
                    "RQPLUS_DURABILITY": "off",  # a benchmark Redis without AOF, on purpose
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
        return env

    def command_calls(self) -> Counter[str]:
        """Calls per command so far (``INFO commandstats``), without INFO itself."""
        return Counter({name.removeprefix("cmdstat_"): stats["calls"]
                        for name, stats in self.conn.info("commandstats").items() if name != "cmdstat_info"})

    def wait_mark(self, key: str, process: subprocess.Popen, deadline: float) -> float:
        """The next time a job recorded in ``key``; ``Failed`` if the worker exits or ``deadline`` passes."""
        while (left := deadline - time.monotonic()) > 0:
            popped = self.clock.blpop([key], timeout=min(1.0, left))
            if popped:
                return float(popped[1])
            if process.poll() is not None:
                raise Failed(f"exited {process.returncode}")
        raise Failed("timeout")


def measure(bench: Bench, contestant: Contestant, work: str, n: int, concurrency: int, timeout: float,
            samples: int = 0, sample_seconds: float = 0.0) -> Outcome:
    """Fill the queue with ``n`` jobs of ``work``, count commands from here, start the worker and
    time its drain; then take up to ``samples`` latency samples on it, idle (``sample_seconds`` at most)."""
    bench.conn.flushdb()
    bench.clock.flushdb()
    side = contestant.side
    side.fill(work, n)
    before = bench.command_calls()
    log = bench.logs / f"{re.sub(r'[^a-z0-9]+', '-', contestant.name.lower())}-{work}-{concurrency}.log"
    try:
        with worker_process(side.command(concurrency), bench.env(concurrency), log) as process:
            deadline = time.monotonic() + timeout
            start = bench.wait_mark(FIRST, process, deadline)
            end = bench.wait_mark(LAST, process, deadline)
            if end <= start:
                raise Failed("last job before the first")
            time.sleep(SETTLE)
            run = Run(n, n / (end - start), bench.command_calls() - before)
            if samples:
                try:
                    run.latencies = latency_samples(bench, side, process, samples, sample_seconds)
                except Failed as failure:
                    run.latency_failure = str(failure)
                    progress(f"  {contestant.name}: latency sample {failure} (log {log.name}: {log_tail(log)})")
    except Failed as failure:
        progress(f"  {contestant.name}: {failure} (log {log.name}: {log_tail(log)})")
        return str(failure)
    return run


def latency_samples(bench: Bench, side: Side, process: subprocess.Popen, count: int, seconds: float) -> list[float]:
    """Seconds from just before each enqueue to its job's start: one job at a time, each after the
    worker was idle for a random ``IDLE_GAP``."""
    samples: list[float] = []
    stop = time.monotonic() + seconds
    while len(samples) < count and time.monotonic() < stop:
        time.sleep(random.uniform(*IDLE_GAP))
        sent = time.time()
        side.send_stamp()
        samples.append(bench.wait_mark(SAMPLE, process, time.monotonic() + SAMPLE_TIMEOUT) - sent)
    return samples


def noop_rounds(bench: Bench, rows: list[Contestant], sizes: Sizes) -> dict[str, list[Outcome]]:
    progress(f"no-op drains and latency: {sizes.rounds} rounds x {len(rows)} contestants x {sizes.noop_jobs} "
             f"jobs ({sizes.fork_jobs} if fork per job), then up to {sizes.samples} latency samples")

    def drain(row: Contestant) -> Callable[[], Outcome]:
        n = sizes.fork_jobs if row.forks else sizes.noop_jobs
        return functools.partial(announced, row.name, measure, bench, row, "noop", n, row.concurrency,
                                 STARTUP + n / NOOP_FLOOR, sizes.samples, sizes.sample_seconds)

    return interleave({row.name: drain(row) for row in rows}, sizes.rounds)


def io_rounds(bench: Bench, rows: list[Contestant], sizes: Sizes) -> dict[int, dict[str, list[Outcome]]]:
    """Per concurrency, the I/O-bound drains of the rows that have that setting (concurrency 1: the others)."""
    results = {}
    for concurrency in (1, *IO_CONCURRENCY):
        entrants = [row for row in rows if (row.concurrency > 1) == (concurrency > 1)]
        n = sizes.io_jobs(concurrency)
        timeout = STARTUP + n / (IO_FLOOR * concurrency / SLEEP)
        progress(f"50 ms jobs at concurrency {concurrency}: {sizes.rounds} rounds x {len(entrants)} contestants "
                 f"x {n} jobs")
        results[concurrency] = interleave(
            {row.name: functools.partial(announced, row.name, measure, bench, row, "sleep_50ms", n, concurrency,
                                         timeout) for row in entrants}, sizes.rounds)
    return results


def announced(name: str, call: Callable[..., Outcome], *args: object) -> Outcome:
    began = time.perf_counter()
    outcome = call(*args)
    rate = f"{outcome.rate:,.0f} jobs/s" if isinstance(outcome, Run) else outcome
    progress(f"  {name}: {rate} ({time.perf_counter() - began:.1f} s)")
    return outcome


# ---------------------------------------------------------------- report


def runs_of(outcomes: list[Outcome]) -> list[Run]:
    return [outcome for outcome in outcomes if isinstance(outcome, Run)]


def rate_cell(outcomes: list[Outcome]) -> str:
    """Median jobs/s over rounds; a failure's text when no round gave one; ``(k/n rounds)`` when some did."""
    runs = runs_of(outcomes)
    if not runs:
        return outcomes[0] if outcomes else "n/a"
    cell = f"{statistics.median(run.rate for run in runs):,.0f}"
    return cell if len(runs) == len(outcomes) else f"{cell} ({len(runs)}/{len(outcomes)} rounds)"


def ratios(outcomes: list[Outcome], references: list[float | None]) -> list[float]:
    """Per-round ratios to ``references`` (the same round's), where both gave a number."""
    return [outcome.rate / ref for outcome, ref in zip(outcomes, references, strict=True)
            if isinstance(outcome, Run) and ref]


def ratio_cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x" if values else "-"


def fastest_peer(results: dict[str, list[Outcome]], peers: list[str], rounds: int) -> list[float | None]:
    """Per round, the higher rate of the peers that gave one."""
    best: list[float | None] = []
    for round_no in range(rounds):
        rates = [results[name][round_no].rate for name in peers
                 if name in results and isinstance(results[name][round_no], Run)]
        best.append(max(rates) if rates else None)
    return best


def round_rates(outcomes: list[Outcome] | None, rounds: int) -> list[float | None]:
    return [o.rate if isinstance(o, Run) else None for o in outcomes] if outcomes else [None] * rounds


RQPLUS_CONCURRENT = ("rqplus ThreadWorker", "rqplus AsyncWorker")
PEERS = ("dramatiq (Redis broker)", "huey (RedisHuey)")
HUEY = "huey (RedisHuey)"
SIMPLE = "rq SimpleWorker"


def noop_table(rows: list[Contestant], results: dict[str, list[Outcome]], sizes: Sizes) -> str:
    peer = fastest_peer(results, list(PEERS), sizes.rounds)
    simple = round_rates(results.get(SIMPLE), sizes.rounds)
    lines = []
    for row in rows:
        target = ">=1.00x peer" if row.name in RQPLUS_CONCURRENT else ""
        if row.missing:
            lines.append([row.name, str(row.concurrency), row.missing, "", "", "", target])
            continue
        outcomes = results[row.name]
        versus_peer = ratios(outcomes, peer)
        if target and versus_peer:
            target += " ok" if statistics.median(versus_peer) >= 1.0 else " BELOW"
        rates = [run.rate for run in runs_of(outcomes)]
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}" if rates else ""
        lines.append([row.name, str(row.concurrency), rate_cell(outcomes), spread, ratio_cell(versus_peer),
                      ratio_cell(ratios(outcomes, simple)), target])
    headers = [f"1 no-op jobs/s, one process ({sizes.noop_jobs:,} jobs; fork per job: {sizes.fork_jobs:,})",
               "concurrency", "jobs/s", "range", "vs fastest peer", "vs rq SimpleWorker", "target"]
    return table(headers, lines) + (
        "\nconcurrency: threads (ThreadWorker, dramatiq, huey) or coroutines (AsyncWorker); 1 = one job at a time."
        "\njobs/s: from the first job's start to the last job's end, median of rounds; ratios: median of the "
        "per-round ratios (fastest peer: the faster of dramatiq and huey in that round).")


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (``share`` 0.95: p95)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


def latency_table(rows: list[Contestant], results: dict[str, list[Outcome]]) -> str:
    def pooled(name: str) -> list[float]:
        return [sample for run in runs_of(results.get(name, [])) for sample in run.latencies]

    huey = pooled(HUEY)
    huey_median = statistics.median(huey) if huey else None
    lines = []
    for row in rows:
        target = "<= huey" if row.name in RQPLUS_CONCURRENT else ""
        samples = pooled(row.name)
        if row.missing or not samples:
            failures = [run.latency_failure for run in runs_of(results.get(row.name, [])) if run.latency_failure]
            failures += [o for o in results.get(row.name, []) if isinstance(o, str)]
            lines.append([row.name, row.missing or (failures[0] if failures else "n/a"), "", "", "", target])
            continue
        median = statistics.median(samples)
        if target and huey_median is not None:
            target += " ok" if median <= huey_median else " ABOVE"
        lines.append([row.name, f"{median * 1000:.2f}", f"{percentile(samples, 0.95) * 1000:.2f}", str(len(samples)),
                      f"{median / huey_median:.2f}x" if huey_median else "-", target])
    headers = ["2 enqueue -> start, idle worker", "median ms", "p95 ms", "samples", "vs huey", "target"]
    return table(headers, lines) + (
        f"\nOne job at a time, each after {IDLE_GAP[0] * 1000:.0f}-{IDLE_GAP[1] * 1000:.0f} ms idle: from just "
        "before the enqueue call to the job's first line (time.time() in both processes); samples of all rounds "
        "pooled. vs huey: ratio of medians.")


def commands_table(rows: list[Contestant], results: dict[str, list[Outcome]], top: int = 6) -> str:
    lines = []
    for row in rows:
        runs = runs_of(results.get(row.name, []))
        if row.missing or not runs:
            lines.append([row.name, row.missing or rate_cell(results.get(row.name, [])), ""])
            continue
        per_job = {name: statistics.median(run.commands[name] / run.jobs for run in runs)
                   for name in set().union(*(run.commands for run in runs))}
        total = statistics.median(sum(run.commands.values()) / run.jobs for run in runs)
        most = [item for item in sorted(per_job.items(), key=lambda item: -item[1])[:top] if item[1] >= 0.05]
        lines.append([row.name, f"{total:.1f}", ", ".join(f"{name} {count:.1f}" for name, count in most)])
    return table(["3 Redis commands per no-op job", "total", "most called, per job"], lines) + (
        "\nINFO commandstats calls (every command, those inside MULTI/EXEC and Lua scripts included; INFO "
        "itself excluded) from after the fill until the drain's end, / jobs: worker start-up included, "
        "median of rounds.")


def io_table(rows: list[Contestant], results: dict[int, dict[str, list[Outcome]]], sizes: Sizes) -> str:
    levels = list(results)
    lines = [["ideal (concurrency / 50 ms)", *(f"{c / SLEEP:,.0f}" for c in levels), ""]]
    for row in rows:
        cells = []
        for concurrency in levels:
            if row.name not in results[concurrency]:
                cells.append(row.missing if row.missing and (row.concurrency > 1) == (concurrency > 1) else "-")
                continue
            outcomes = results[concurrency][row.name]
            cell = rate_cell(outcomes)
            runs = runs_of(outcomes)
            if runs:
                cell += f" ({statistics.median(run.rate for run in runs) / (concurrency / SLEEP):.0%})"
            cells.append(cell)
        target = ""
        if row.name == "rqplus AsyncWorker":
            at_1000 = runs_of(results[1000].get(row.name, []))
            verdict = "" if not at_1000 else (" ok" if statistics.median(r.rate for r in at_1000) >= 5000 else
                                              " BELOW")
            target = ">=5,000 at 1000" + verdict
        lines.append([row.name, *cells, target])
    jobs = ", ".join(f"{sizes.io_jobs(c):,} at {c}" for c in levels)
    headers = ["4 50 ms jobs/s, one process", *(f"c={c}" for c in levels), "target"]
    return table(headers, lines) + (
        f"\nJobs that sleep 50 ms (time.sleep; AsyncWorker: await asyncio.sleep), {jobs}; c = threads "
        "(ThreadWorker, dramatiq -t, huey -w, none capped) or coroutines (AsyncWorker); the one-job-at-a-time "
        "workers run at c=1 only. (%) = share of the ideal rate. Median of rounds.")


def versions() -> str:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return f"rq {rq.__version__}, dramatiq {version('dramatiq')}, huey {version('huey')}"


def main() -> None:
    args = command_line(__doc__, 90, lambda parser: parser.add_argument(
        NO_PEERS_VENV, action="store_true", help="run in this interpreter's environment (peers n/a unless installed)"),
        rounds=(FULL.rounds, QUICK.rounds))
    sizes = QUICK if args.quick else FULL
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)

    began = time.perf_counter()
    with (RedisServer(config={"appendonly": "no", "maxclients": 10000}) as server,
          RedisServer(config={"appendonly": "no"}) as clock_server,
          tempfile.TemporaryDirectory(prefix="rqplus-bench-workers-") as logs):
        os.environ[REDIS_URL_ENV] = server.url  # read by the peers' modules, here and in their workers
        os.environ[CLOCK_URL_ENV] = clock_server.url
        os.environ["RQPLUS_JOB_MODULES"] = "bench.jobs"
        conn = server.client()
        bench = Bench(conn, server.url, clock_server.client(), Path(logs))
        redis_version = conn.info("server")["redis_version"]
        load = os.getloadavg()[0]
        rows = contestants(conn, server.url)
        for row in rows:
            if row.missing:
                progress(f"{row.name}: {row.missing}")
        runnable = [row for row in rows if not row.missing]
        noop = noop_rounds(bench, runnable, sizes)
        io = io_rounds(bench, runnable, sizes)
        parts = [noop_table(rows, noop, sizes), latency_table(rows, noop), commands_table(rows, noop),
                 io_table(rows, io, sizes)]
        conn.close()
        bench.clock.close()
    report(versions(), redis_version, load, args.quick, sizes.rounds, began, parts)


if __name__ == "__main__":
    main()
