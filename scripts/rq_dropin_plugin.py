"""Helper of ``scripts/rq_dropin.sh``: runs RQ's own test suite against ``rqplus.Queue``/``rqplus.Worker``.

Three jobs, all switched by environment variables set by the shell script:

* **Private Redis only** (``RQ_DROPIN_REDIS_PORT``, always on). RQ's tests hard-code
  ``localhost:6379`` (``Redis()``, ``Redis(db=N)``, ``redis://127.0.0.1:6379/N`` URLs, also in the
  ``rqworker`` subprocesses and forked/spawned workers they start). redis-py's ``Connection`` is
  wrapped so that a connection to localhost/127.0.0.1 port 6379 goes to the private server's port
  instead, and a last-resort guard on ``socket.connect`` refuses any other loopback connection to
  port 6379: the machine's own Redis is never touched. Connection *kwargs* are left as they are,
  so tests that inspect them still see 6379.

* **Substitution at the source** (``RQ_DROPIN_SUBSTITUTE=rqplus`` or ``identity``). Before any
  test module is imported, the stock classes are replaced wherever rq holds them: ``rq.Queue``,
  ``rq.queue.Queue``, ``rq.Worker``, ``rq.worker.Worker``, the other rq modules' globals, class
  attributes (``BaseWorker.queue_class``, the ``@job`` decorator's) and defaults (``rq
  worker-pool``'s ``WorkerPool``), so every name RQ resolves (the CLI's ``rq.Queue``/``rq.Worker``
  defaults, ``Worker(queue_class='rq.Queue')``, ``import_queue_class``) and every test import
  gets the substitute, and test-defined subclasses subclass it. ``rqplus`` substitutes
  ``rqplus.Queue``/``rqplus.Worker``; ``identity`` substitutes ``class Queue(rq.Queue): pass`` and
  its Worker: what fails with those is an artifact of substituting at all, not of rqplus.
  ``SimpleWorker`` etc. stay RQ's (subclasses of the stock Worker).

* **Results** (``RQ_DROPIN_RESULTS=<file.jsonl>``). One JSON line per test outcome, written as the
  run goes (a run killed by the outer timeout still leaves its results and the test that hung).

Loaded in the pytest process with ``-p rq_dropin_plugin`` and in every child Python process
through a generated ``sitecustomize.py`` (the script puts both on ``PYTHONPATH``).

``python scripts/rq_dropin_plugin.py compare ...`` writes the stock-vs-identity-vs-rqplus summary; see
``main``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import types
from pathlib import Path
from typing import Any

REDIS_DEFAULT_PORT = 6379
LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", "ip6-localhost"}

_installed: set[str] = set()


# --------------------------------------------------------------------------------------------
# Private Redis redirect
# --------------------------------------------------------------------------------------------

def install_redis_redirect() -> None:
    port_env = os.environ.get("RQ_DROPIN_REDIS_PORT")
    if not port_env or "redirect" in _installed:
        return
    _installed.add("redirect")
    private_port = int(port_env)

    original_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if (
            self.family in (socket.AF_INET, socket.AF_INET6)
            and isinstance(address, tuple)
            and len(address) >= 2
            and address[1] == REDIS_DEFAULT_PORT
            and (address[0] in LOOPBACK or str(address[0]).startswith("127."))
        ):
            raise ConnectionRefusedError(
                f"rq_dropin: refused to connect to the machine's Redis at {address[0]}:{address[1]}"
            )
        return original_connect(self, address)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign]

    import redis.connection

    original_init = redis.connection.Connection.__init__

    def redirected_init(self: Any, host: str = "localhost", port: int = REDIS_DEFAULT_PORT, *args: Any, **kwargs: Any) -> None:
        if host in LOOPBACK and int(port) == REDIS_DEFAULT_PORT:
            host, port = "127.0.0.1", private_port
        original_init(self, host, port, *args, **kwargs)

    redis.connection.Connection.__init__ = redirected_init  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------------
# Substitution of Queue/Worker at the source
# --------------------------------------------------------------------------------------------

#: RQ_DROPIN_SUBSTITUTE value -> what replaces rq's Queue/Worker
MODES = ("rqplus", "identity")


def identity_classes() -> tuple[type, type]:
    """``class Queue(rq.Queue): pass`` and its Worker, importable as ``rq_dropin_plugin.Queue``/``.Worker``:
    substituted like rqplus's, they show which failures come from substituting a subclass at all."""
    import rq

    queue = type("Queue", (rq.Queue,), {"__module__": __name__})
    worker = type("Worker", (rq.Worker,), {"__module__": __name__, "queue_class": queue})
    globals().update(Queue=queue, Worker=worker)
    return queue, worker


def _rebind(holder: dict[str, Any], substitutes: dict[int, Any]) -> int:
    """Replace, in a module's or class's namespace, every value that is a stock class; count them."""
    count = 0
    for attr, value in list(holder.items()):
        if id(value) in substitutes:
            holder[attr] = substitutes[id(value)]
            count += 1
    return count


def _rebind_defaults(function: Any, substitutes: dict[int, Any]) -> int:
    function = getattr(function, "__func__", function)
    if not isinstance(function, types.FunctionType):
        return 0
    count = 0
    if function.__defaults__ and any(id(d) in substitutes for d in function.__defaults__):
        function.__defaults__ = tuple(substitutes.get(id(d), d) for d in function.__defaults__)
        count += 1
    if function.__kwdefaults__:
        count += _rebind(function.__kwdefaults__, substitutes)
    return count


def substitute_at_source(queue: type, worker: type) -> int:
    """Bind ``queue``/``worker`` wherever rq's already imported modules hold the stock classes:
    module globals (``rq.Queue``, ``rq.queue.Queue``, ``rq.worker.Worker``, ``rq.decorators.Queue``
    ...), class attributes of rq's classes (``BaseWorker.queue_class``, ``job.queue_class``) and
    function defaults (``WorkerPool(worker_class=Worker, queue_class=Queue)``). rq modules imported
    later import the substitutes from there, and the names RQ resolves (``'rq.Queue'``, the CLI's
    defaults, ``Worker(queue_class='rq.Queue')``, ``import_queue_class``) find them. Returns how
    many references changed.
    """
    import rq

    substitutes = {id(rq.Queue): queue, id(rq.Worker): worker}
    count = 0
    for name, module in list(sys.modules.items()):
        if not (name == "rq" or name.startswith("rq.")) or module is None:
            continue
        count += _rebind(module.__dict__, substitutes)
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == name:
                for attr, member in list(vars(value).items()):
                    if id(member) in substitutes:
                        setattr(value, attr, substitutes[id(member)])
                        count += 1
                    else:
                        count += _rebind_defaults(member, substitutes)
            elif getattr(value, "__module__", None) == name:
                count += _rebind_defaults(value, substitutes)
    return count


def install_substitution() -> None:
    mode = os.environ.get("RQ_DROPIN_SUBSTITUTE")
    if mode not in MODES or "substitute" in _installed:
        return
    _installed.add("substitute")
    if mode == "identity":
        queue, worker = identity_classes()
    else:
        import rqplus  # first: it subclasses the stock classes

        queue, worker = rqplus.Queue, rqplus.Worker
    substitute_at_source(queue, worker)


def install() -> None:
    install_redis_redirect()
    install_substitution()


install()


# --------------------------------------------------------------------------------------------
# pytest hooks (active when loaded with -p rq_dropin_plugin)
# --------------------------------------------------------------------------------------------

_results_file = None


def _record(entry: dict[str, Any]) -> None:
    global _results_file
    path = os.environ.get("RQ_DROPIN_RESULTS")
    if not path:
        return
    if _results_file is None:
        _results_file = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the session
    _results_file.write(json.dumps(entry) + "\n")


def _mode() -> str:
    return os.environ.get("RQ_DROPIN_SUBSTITUTE", "stock") if "substitute" in _installed else "stock"


def pytest_report_header(config: Any) -> list[str]:
    port = os.environ.get("RQ_DROPIN_REDIS_PORT", "?")
    return [f"rq_dropin: Queue/Worker: {_mode()}; Redis: private server on 127.0.0.1:{port} (6379 redirected)"]


def pytest_sessionstart(session: Any) -> None:
    if "redirect" not in _installed:
        raise RuntimeError("rq_dropin: RQ_DROPIN_REDIS_PORT is not set; refusing to run against the machine's Redis")
    from redis import Redis

    with Redis(db=4, socket_connect_timeout=2) as connection:  # what RQ's tests do
        port = int(connection.info("server")["tcp_port"])
    if port != int(os.environ["RQ_DROPIN_REDIS_PORT"]):
        raise RuntimeError(f"rq_dropin: Redis() reached port {port}, not the private server")
    _record({"event": "session", "mode": _mode(), "time": time.time()})


def pytest_collection_finish(session: Any) -> None:
    """When substituting, check that rq's names and every test module's ``Queue``/``Worker`` are the
    substitutes, and record where rqplus was imported from."""
    if "substitute" not in _installed:
        return
    import rq
    import rq.queue
    import rq.worker

    expected = {"Queue": rq.queue.Queue, "Worker": rq.worker.Worker}
    if rq.Queue.__module__.startswith("rq.") or rq.Worker.__module__.startswith("rq."):
        raise RuntimeError(f"rq_dropin: rq.Queue is {rq.Queue}, rq.Worker is {rq.Worker}: not substituted")
    substituted, leaked = 0, []
    for name, module in list(sys.modules.items()):
        if not (name == "tests" or name.startswith("tests.")):
            continue
        for attr, value in expected.items():
            found = getattr(module, attr, None)
            if found is value:
                substituted += 1
            elif isinstance(found, type) and found.__module__.startswith("rq.") and found.__name__ == attr:
                leaked.append(f"{name}.{attr}")
    if leaked:
        raise RuntimeError(f"rq_dropin: substitution missed {leaked}")
    rqplus = sys.modules.get("rqplus")
    _record({"event": "substituted", "count": substituted, "mode": _mode(),
             "rqplus": os.path.dirname(os.path.realpath(rqplus.__file__)) if rqplus else None})


def _one_line(report: Any) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple):  # skip: (path, lineno, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[:3])[:300]


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _record({"event": "start", "nodeid": nodeid, "time": time.time()})


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call":
        outcome = report.outcome
    elif report.outcome == "skipped":
        outcome = "skipped"
    elif report.outcome == "failed":
        outcome = "error"  # setup/teardown failure
    else:
        return
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.outcome == "skipped" else "xpassed"
    _record({
        "event": "result", "nodeid": report.nodeid, "when": report.when, "outcome": outcome,
        "duration": round(report.duration, 3), "reason": _one_line(report),
    })


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    _record({"event": "finish", "exitstatus": int(exitstatus), "time": time.time()})


def pytest_unconfigure(config: Any) -> None:
    """Stop what RQ's tests left running, so pytest can exit.

    A failed assertion can skip a test's own cleanup (``test_reap_workers`` then leaves a
    ``WorkerPool``'s worker processes behind) and multiprocessing's exit handler would wait for
    them for ever. Only descendants of this pytest process are touched.
    """
    if "redirect" not in _installed:
        return
    try:
        import psutil
    except ImportError:
        return
    children = psutil.Process().children(recursive=True)
    if not children:
        return
    _record({"event": "leftover", "processes": [_described(c) for c in children]})
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass


# --------------------------------------------------------------------------------------------
# Comparison / summary
# --------------------------------------------------------------------------------------------

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
BAD = {"failed", "error"}


class Run:
    def __init__(self, path: Path):
        self.path = path
        self.results: dict[str, dict[str, Any]] = {}
        self.started: list[str] = []
        self.finished = False
        self.substituted = None
        self.rqplus_path = None
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            event = entry.get("event")
            if event == "start":
                self.started.append(entry["nodeid"])
            elif event == "result":
                previous = self.results.get(entry["nodeid"])
                # call result first; a later teardown error turns a pass into an error
                if previous is None or (previous["outcome"] not in BAD and entry["outcome"] in BAD):
                    self.results[entry["nodeid"]] = entry
            elif event == "finish":
                self.finished = True
            elif event == "substituted":
                self.substituted = entry["count"]
                self.rqplus_path = entry.get("rqplus")

    def outcome(self, nodeid: str) -> str | None:
        entry = self.results.get(nodeid)
        return entry["outcome"] if entry else None

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(OUTCOMES, 0)
        for entry in self.results.values():
            counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        return counts

    def hung(self) -> str | None:
        """The test that started but never reported, when the run did not finish."""
        if self.finished:
            return None
        missing = [nodeid for nodeid in self.started if nodeid not in self.results]
        return missing[-1] if missing else None


def read_known(path: Path) -> dict[str, str]:
    known: dict[str, str] = {}
    if not path.exists():
        return known
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        nodeid, _, reason = line.partition("#")
        known[nodeid.strip()] = reason.strip()
    return known


def compare(args: argparse.Namespace) -> int:
    baseline, rqplus = Run(Path(args.baseline)), Run(Path(args.rqplus))
    identity = Run(Path(args.identity)) if args.identity else None
    rerun = Run(Path(args.rerun)) if args.rerun else None
    known = read_known(Path(args.known))
    times = dict(item.split("=", 1) for item in args.time or [])

    regressions, flaky, allowed, artifacts, fixed, both_bad, stale = [], [], [], [], [], [], []
    for nodeid in sorted(set(baseline.results) | set(rqplus.results)):
        before, after = baseline.outcome(nodeid), rqplus.outcome(nodeid)
        if after in BAD and before not in BAD:
            reason = rqplus.results[nodeid]["reason"]
            if identity is not None and identity.outcome(nodeid) in BAD:
                artifacts.append((nodeid, reason, identity.results[nodeid]["reason"]))
            elif nodeid in known:
                allowed.append((nodeid, known[nodeid], reason))
            elif rerun is not None and rerun.outcome(nodeid) == "passed":
                flaky.append((nodeid, reason))
            else:
                regressions.append((nodeid, after, reason))
        elif after in BAD and before in BAD:
            both_bad.append((nodeid, baseline.results[nodeid]["reason"]))
        elif before in BAD and after == "passed":
            fixed.append(nodeid)
    for nodeid in known:
        if rqplus.outcome(nodeid) == "passed" or nodeid in {artifact for artifact, _, _ in artifacts}:
            stale.append(nodeid)

    out: list[str] = []
    w = out.append
    w(f"RQ drop-in compatibility: rq {args.rq_version} test suite, stock rq vs rqplus.Queue/rqplus.Worker")
    w(f"(substituted at the source, rq's own names included; rqplus run: {rqplus.substituted} test-module"
      f" bindings checked, rqplus imported from {rqplus.rqplus_path})")
    w("")
    w(f"{'':10}" + "".join(f"{o:>9}" for o in OUTCOMES) + f"{'total':>8}{'wall s':>9}  complete")
    runs = [("baseline", baseline), *([("identity", identity)] if identity is not None else []), ("rqplus", rqplus)]
    for label, run in runs:
        counts = run.counts()
        w(f"{label:10}" + "".join(f"{counts[o]:>9}" for o in OUTCOMES)
          + f"{sum(counts.values()):>8}{times.get(label, '?'):>9}  {'yes' if run.finished else 'NO'}")
    if rerun is not None:
        w(f"rerun of {len(rerun.results)} failing test(s) in rqplus mode: {times.get('rerun', '?')} s")
    for label, run in runs:
        if not run.finished:
            w(f"!! {label} run did not finish (crash or timeout); last test started: {run.hung()}")
    w("")
    w(f"Pass on stock, fail with rqplus, NOT in the known differences ({len(regressions)}):")
    for nodeid, outcome, reason in regressions:
        w(f"  {nodeid} [{outcome}]\n      {reason}")
    w("")
    w(f"Pass on stock, fail with rqplus, deliberate (in {Path(args.known).name}) ({len(allowed)}):")
    for nodeid, why, reason in allowed:
        w(f"  {nodeid}\n      deliberate: {why}\n      failure:    {reason}")
    if identity is not None:
        w("")
        w(f"Fail with an identity subclass of rq's classes too, artifacts of substituting ({len(artifacts)}):")
        for nodeid, reason, identity_reason in artifacts:
            w(f"  {nodeid}\n      rqplus:   {reason}\n      identity: {identity_reason}")
    if flaky:
        w("")
        w(f"Failed with rqplus but passed on rerun, counted as flaky ({len(flaky)}):")
        for nodeid, reason in flaky:
            w(f"  {nodeid}\n      {reason}")
    if both_bad:
        w("")
        w(f"Fail on stock rq too, not compared ({len(both_bad)}):")
        for nodeid, reason in both_bad:
            w(f"  {nodeid}\n      {reason}")
    if fixed:
        w("")
        w(f"Fail on stock, pass with rqplus ({len(fixed)}): " + ", ".join(fixed))
    if stale:
        w("")
        w(f"Known differences that pass with rqplus or are artifacts (remove them from the list?) ({len(stale)}):")
        for nodeid in stale:
            w(f"  {nodeid}")

    status = 0
    if regressions:
        status = 1
    if not all(run.finished for _, run in runs):
        status = 1
    w("")
    w("RESULT: " + ("OK, only known differences" if status == 0 else "FAIL"))
    text = "\n".join(out) + "\n"
    Path(args.out).write_text(text)
    print(text, end="")
    if args.regressions_out:
        # worth a rerun: not the ones that hit the per-test timeout (a rerun would just hang again)
        rerun = [nodeid for nodeid, _, reason in regressions if "Timeout (>" not in reason]
        Path(args.regressions_out).write_text("".join(f"{nodeid}\n" for nodeid in rerun))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="compare a baseline and an rqplus run (JSONL results)")
    cmp.add_argument("--baseline", required=True)
    cmp.add_argument("--rqplus", required=True)
    cmp.add_argument("--identity", help="results of the run with identity subclasses of rq's classes")
    cmp.add_argument("--rerun", help="results of rerunning the unexplained failures in rqplus mode")
    cmp.add_argument("--known", required=True, help="allow-list of deliberate differences")
    cmp.add_argument("--out", required=True, help="summary file to write")
    cmp.add_argument("--regressions-out", help="write the unexplained failures' node ids here")
    cmp.add_argument("--rq-version", default="?")
    cmp.add_argument("--time", action="append", help="label=seconds, for the summary table")
    args = parser.parse_args(argv)
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())


def _described(process: Any) -> str:
    """``pid command...`` of a leftover process; a zombie or one gone meanwhile has no command line."""
    import psutil

    try:
        return f"{process.pid} {' '.join(process.cmdline()[:4])}"
    except psutil.Error as error:
        return f"{process.pid} ({type(error).__name__})"
