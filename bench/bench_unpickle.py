"""Benchmark the safe unpickler (rqplus.unpickling) against ``pickle.loads``, per load.

No Redis: each payload is loaded in a loop, by C's ``pickle.loads``, by
``rqplus.serializers.SafePickleSerializer`` (what rqplus workers read with) and, for reference, by
the pure-Python ``pickle._Unpickler`` the engine derives from. The three take turns, payload by
payload, in reversed order every other round; the table shows medians over rounds. A second table gives the CPU
time of refusing each forged pickle of issue 19 (``tests/pickles.py``).

Usage (any working directory; the repo root is put on ``sys.path``)::

    python bench/bench_unpickle.py             # full run, about 40 seconds
    python bench/bench_unpickle.py --quick     # about 10 seconds

What each row means: bench/README.md.
"""

from __future__ import annotations

import io
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from uuid import UUID

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_priority import ARGS, command_line, interleave, progress, report, table  # noqa: E402
from rqplus.serializers import SafePickleSerializer  # noqa: E402
from rqplus.unpickling import plain_pickle  # noqa: E402

#: What a job hash holds: its meta, its data (function, instance, args, kwargs), bigger payloads.
PAYLOADS = {
    "meta {'priority': 5}": {"priority": 5},
    "data: record('tag')": ("tests.jobs.record", None, ("tag",), {}),
    "data: a dict of text and numbers": ("bench.noop.noop", None, ({"user": "u1", "amount": "12.50", "tags": ["a", "b"],
                                                                   "n": 3},), {"retries": 2}),
    "data: bench_priority's row 5 dict": ("bench.noop.noop", None, ARGS, {}),
    "result: 1,000 dicts (keys shared)": [{"id": n, "name": f"n{n}"} for n in range(1000)],
    "result: 10,000 rows, datetimes, Decimals": [(n, datetime(2026, 1, 1, tzinfo=timezone.utc), Decimal(n) / 100,
                                                  UUID(int=n)) for n in range(10_000)],
}


def per_load(load: Callable[[bytes], object], data: bytes, loops: int) -> float:
    """Microseconds per ``load(data)``, over ``loops`` loads."""
    start = time.perf_counter()
    for _ in range(loops):
        load(data)
    return (time.perf_counter() - start) / loops * 1e6


def pure_python(data: bytes) -> object:
    return pickle._Unpickler(io.BytesIO(data)).load()


def speeds(rounds: int, budget: float) -> str:
    rows = []
    for title, value in PAYLOADS.items():
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        assert SafePickleSerializer.loads(data) == pickle.loads(data)
        loops = max(1, int(budget / max(per_load(pure_python, data, 1) * 1e-6, 1e-7)))
        progress(f"{title}: {rounds} rounds x 3 readers x {loops} loads")
        timings = interleave({name: lambda load=load: per_load(load, data, loops) for name, load in
                              (("c", pickle.loads), ("safe", SafePickleSerializer.loads), ("python", pure_python))},
                             rounds)
        c, safe, python = (statistics.median(timings[name]) for name in ("c", "safe", "python"))
        ratios = [s / p for s, p in zip(timings["safe"], timings["c"])]
        rows.append([title, f"{len(data):,}", "fast" if plain_pickle(data) else "engine", f"{c:,.2f}", f"{safe:,.2f}",
                     f"{statistics.median(ratios):.1f}x", f"{min(ratios):.1f}-{max(ratios):.1f}", f"{python:,.2f}"])
    headers = ["payload", "bytes", "path", "pickle.loads us", "safe us", "safe/pickle.loads", "ratio range",
               "pure-Python us"]
    return table(headers, rows)


def refusals() -> str:
    from tests.pickles import BOMBS, MUTATIONS

    rows = []
    for title, data in {**MUTATIONS, **BOMBS}.items():
        try:  # a first load may import the allowed module a pickle names: not timed
            SafePickleSerializer.loads(data)
        except pickle.UnpicklingError:
            pass
        start = time.process_time()
        try:
            SafePickleSerializer.loads(data)
            outcome = "LOADED"
        except pickle.UnpicklingError as error:
            outcome = str(error).removeprefix("the pickle ").split(";")[0][:70]
        rows.append([title, f"{len(data):,}", f"{(time.process_time() - start) * 1e3:.2f}", outcome])
    return table(["forged pickle (tests/pickles.py)", "bytes", "CPU ms", "refused: the pickle ..."], rows)


def main() -> None:
    args = command_line(__doc__, 10)
    rounds = args.rounds or (3 if args.quick else 7)
    os.environ["RQPLUS_JOB_MODULES"] = "tasks,tests.jobs,bench.noop"
    began = time.perf_counter()
    load = os.getloadavg()[0]
    parts = [speeds(rounds, 0.3 if args.quick else 1.0), refusals()]
    report(f"pickle.loads (C) of Python {sys.version.split()[0]}", "none", load, args.quick, rounds, began, parts)


if __name__ == "__main__":
    main()
