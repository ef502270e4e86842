"""The ``rqplus`` command line: a thin shell over :mod:`rqplus.stack` and :mod:`rqplus.durability`.

Usage::

    rqplus up --demo                 # embedded Redis (or $REDIS_URL), 2 workers, a live demo
    rqplus up --workers 4 emails     # 4 workers on queue "emails"
    rqplus worker --processes 4 emails payments   # 4 supervised worker processes, drained on SIGTERM
    rqplus check                     # is $REDIS_URL durable enough for queues? exit 0 yes, 1 no, 2 unreachable
    rqplus dashboard                 # the secured dashboard on http://127.0.0.1:9181/
    rqplus requeue --queue emails    # requeue the failed jobs of "emails", each at its priority
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

import click
from redis import Redis
from redis.exceptions import AuthenticationError, ConnectionError, RedisError, ResponseError, TimeoutError

from rqplus import __version__, durability, functions, pool, requeue, stack
from rqplus.connections import REDIS_URL_ENV, connect, explain, one_attempt, redact, redis_url, url_is_configured
from rqplus.defaults import (DASHBOARD_HOST, DASHBOARD_PORT, DASHBOARD_PREFIX, DEFAULT_QUEUES, POOL_PROCESSES,
                             WORKER_STOP_TIMEOUT)
from rqplus.exceptions import LibraryError, RequeueBusyError, UnknownQueueError
from rqplus.functions import library_named, rqplus_library
from rqplus.limits import check_queue_name

#: Seconds ``rqplus check`` waits to connect and for each answer (one attempt, no retries), and
#: ``rqplus requeue`` to connect.
CHECK_TIMEOUT = 2.0


@click.group()
@click.version_option(__version__, prog_name="rqplus")
def main() -> None:
    """rqplus: RQ job queues with per-job priority."""


def concurrency_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--threads N`` / ``--async N``: which worker class each process runs, and how many jobs at once."""
    command = click.option("--async", "tasks", type=click.IntRange(min=1), metavar="N",
                           help="Each process runs rqplus.AsyncWorker, N jobs at once in an event loop.")(command)
    return click.option("--threads", type=click.IntRange(min=1), metavar="N",
                        help="Each process runs rqplus.ThreadWorker, N jobs at once in threads.")(command)


def _checked_queues(context: click.Context, parameter: click.Parameter, queues: tuple[str, ...]) -> tuple[str, ...]:
    """The QUEUES arguments of ``up`` and ``worker``, each a name rqplus accepts (see rqplus.limits)."""
    for name in queues:
        try:
            check_queue_name(name)
        except ValueError as error:
            raise click.BadParameter(str(error), context, parameter) from None
    return queues


def _worker_class(threads: int | None, tasks: int | None, worker_class: str | None = None) -> tuple[str, int | None]:
    try:
        return pool.worker_class_for(threads, tasks, worker_class)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


@main.command(short_help="Run Redis and rqplus workers until Ctrl-C.")
@click.option("--workers", "-n", type=click.IntRange(min=1), default=POOL_PROCESSES, show_default=True,
              help="Number of worker processes.")
@concurrency_options
@click.option("--demo", is_flag=True,
              help='Enqueue demo jobs of every priority on queue "demo" and show their progress.')
@click.option("--exit-when-done", is_flag=True, help="With --demo: stop once every demo job has run.")
@click.option("--url", "-u", metavar="URL",
              help="Redis to use (default: $REDIS_URL, else a local Redis, else an embedded one in ./.rqplus).")
@click.option("--dashboard-port", type=click.IntRange(0, 65535), default=DASHBOARD_PORT, show_default=True,
              help="Serve the dashboard on 127.0.0.1 at this port (0: any free port; another one if taken).")
@click.option("--no-dashboard", is_flag=True, help="Do not serve the dashboard.")
@click.argument("queues", nargs=-1, callback=_checked_queues)
def up(workers: int, threads: int | None, tasks: int | None, demo: bool, exit_when_done: bool, url: str | None,
       dashboard_port: int, no_dashboard: bool, queues: tuple[str, ...]) -> None:
    """Run a local stack: Redis, rqplus workers on QUEUES (default: "default") and the dashboard, until Ctrl-C.

    Without --url or $REDIS_URL, a Redis answering at 127.0.0.1:6379 is used; if none does, an
    embedded redis-server with AOF is started, its data in ./.rqplus, so queued jobs outlive the run.
    The dashboard signs in with $RQPLUS_DASHBOARD_USERNAME / $RQPLUS_DASHBOARD_PASSWORD, or with a
    password made up for the run and printed.
    """
    if exit_when_done and not demo:
        raise click.UsageError("--exit-when-done needs --demo")
    worker_class, concurrency = _worker_class(threads, tasks)
    try:
        stack.up(queues, workers=workers, url=url, demo=demo, exit_when_done=exit_when_done,
                 dashboard_port=None if no_dashboard else dashboard_port, worker_class=worker_class,
                 concurrency=concurrency)
    except stack.StackError as error:
        click.echo(f"rqplus up: error: {error}", err=True)
        raise SystemExit(error.exit_code) from None


@main.command(short_help="Run a supervised pool of rqplus worker processes.")
@click.option("--processes", "-p", type=click.IntRange(min=1), default=POOL_PROCESSES, show_default=True,
              help="Number of worker processes.")
@concurrency_options
@click.option("--worker-class", "-w", metavar="CLASS",
              help="Dotted path of the worker class (default: rqplus.Worker, or as --threads/--async say).")
@click.option("--burst", "-b", is_flag=True, help="Workers quit once the queues are empty; then the pool exits.")
@click.option("--url", "-u", metavar="URL", help="Redis to use (default: $REDIS_URL, else redis://127.0.0.1:6379/0).")
@click.option("--stop-timeout", type=click.FloatRange(min=0), default=WORKER_STOP_TIMEOUT, show_default=True,
              metavar="SECONDS", help="On SIGTERM/Ctrl-C, how long running jobs may take to finish before they "
              "are put back in their queues.")
@click.option("--with-scheduler/--no-scheduler", default=True, show_default=True,
              help="Workers run RQ's scheduler (one at a time holds its lock) for enqueue_at/enqueue_in jobs.")
@click.argument("queues", nargs=-1, callback=_checked_queues)
def worker(processes: int, threads: int | None, tasks: int | None, worker_class: str | None, burst: bool,
           url: str | None, stop_timeout: float, with_scheduler: bool, queues: tuple[str, ...]) -> None:
    """Run PROCESSES rqplus workers on QUEUES (first named first; default: "default"), each an `rq worker`
    process, replaced if it dies, until SIGTERM or Ctrl-C.

    SIGTERM or Ctrl-C: each worker finishes its running job (warm shutdown); after --stop-timeout, the
    jobs still running go back to their queues (cold shutdown; a second Ctrl-C does it at once), and a
    worker still there 3 s later is killed. Exits 0 after a clean stop, 1 if a worker had to be killed
    or workers keep exiting right after their start (5 in a row: not restarted), 2 if Redis cannot be
    used. With --burst, exits once every worker has emptied the queues.
    """
    worker_class, concurrency = _worker_class(threads, tasks, worker_class)
    chosen, where = _chosen_url("worker", url)
    problem = stack.why_not_redis(chosen)
    if problem:
        _failed("worker", f"cannot use Redis at {where}: {problem}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rqplus worker: %(message)s", datefmt="%H:%M:%S")
    workers = pool.WorkerPool(queues or DEFAULT_QUEUES, processes, worker_class=worker_class, concurrency=concurrency,
                              url=chosen, burst=burst, stop_timeout=stop_timeout, scheduler=with_scheduler)
    raise SystemExit(workers.run())


@main.command(short_help="Check that Redis is durable enough for queues; --install loads rqplus's functions.")
@click.option("--url", "-u", metavar="URL", help="Redis to check (default: $REDIS_URL, else redis://127.0.0.1:6379/0).")
@click.option("--install", is_flag=True,
              help="First load rqplus's Redis function library (a user allowed FUNCTION LOAD: rqplus-installer).")
@click.option("--library", "libraries", multiple=True, metavar="MODULE[:NAME]",
              help="With --install, also this module's function library (its FUNCTIONS), e.g. tasks.payments.")
@click.option("--prune", is_flag=True, help="With --install, delete the other versions of those libraries.")
def check(url: str | None, install: bool, libraries: tuple[str, ...], prune: bool) -> None:
    """Check that a Redis keeps queued jobs through a crash or restart, and never evicts them.

    Prints the verdict, each problem with the redis.conf line that fixes it, each warning, and the
    settings read. Exits 0 when durable, 1 when not, 2 when Redis cannot be reached or read, or
    --install fails. --install first loads rqplus's Lua (and each --library), printing what it did.
    """
    if (libraries or prune) and not install:
        raise click.UsageError("--library and --prune go with --install")
    try:
        chosen_libraries = [rqplus_library(), *(library_named(spec) for spec in libraries)]
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    chosen, where = _chosen_url("check", url)
    with _redis_errors("check", where, chosen):
        client = connect(chosen, **one_attempt(CHECK_TIMEOUT))
        try:
            if install:
                try:
                    lines = functions.install(client, chosen_libraries, prune=prune)
                except LibraryError as error:
                    _failed("check", str(error))
                click.echo("".join(f"functions: {line}\n" for line in lines), nl=False)
            report = durability.check(client, exposure=True)
        finally:
            client.close()
    click.echo(_render(report, where))
    raise SystemExit(0 if report.ok else 1)


@main.command(short_help="Serve the dashboard: rq-dashboard, secured, with rqplus' views.")
@click.option("--url", "-u", metavar="URL", help="Redis to show (default: $REDIS_URL, else redis://127.0.0.1:6379/0).")
@click.option("--host", default=DASHBOARD_HOST, show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DASHBOARD_PORT, show_default=True,
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--prefix", default=DASHBOARD_PREFIX, show_default=True, help="Where rq-dashboard's pages live.")
@click.option("--no-auth", is_flag=True, help="Serve without authentication (loopback addresses only).")
def dashboard(url: str | None, host: str, port: int, prefix: str, no_auth: bool) -> None:
    """Serve the dashboard with waitress: rq-dashboard at --prefix, rqplus' pages at /.

    Sign-in credentials come from $RQPLUS_DASHBOARD_USERNAME and $RQPLUS_DASHBOARD_PASSWORD
    (HTTP Basic auth is accepted too); without them it refuses to start unless --no-auth is given.
    """
    from rqplus import dashboard as board  # Flask and rq-dashboard are only needed here

    if no_auth and not board.is_loopback(host):
        raise click.UsageError(f"--no-auth serves loopback addresses only, not {host}: set "
                               "RQPLUS_DASHBOARD_USERNAME and RQPLUS_DASHBOARD_PASSWORD to listen there")
    try:
        app = board.create_app(url, auth=not no_auth, prefix=prefix)
        server = board.Server(app, host, port)
    except (ValueError, OSError) as error:  # no credentials (DashboardConfigError), bad URL, port taken
        click.echo(f"rqplus dashboard: error: {error}", err=True)
        raise SystemExit(2) from None
    click.echo(f"rqplus dashboard: {' '.join(server.urls)} (Redis {redact(redis_url(url))})")
    if no_auth:
        click.echo("rqplus dashboard: authentication is OFF (--no-auth): listening on loopback only", err=True)
    server.run()


@main.command("requeue", short_help="Requeue failed jobs, each at its priority, resumably.")
@click.option("--queue", "-q", metavar="QUEUE", help="The queue whose failed jobs are requeued (with --resume: only its requeues are resumed).")
@click.option("--function", "-f", metavar="NAME", help="Only jobs of this function (its dotted name, exactly).")
@click.option("--exception", "-e", metavar="TYPE", help="Only jobs that failed with this exception type (e.g. TimeoutError).")
@click.option("--url", "-u", metavar="URL", help="Redis to use (default: $REDIS_URL, else redis://127.0.0.1:6379/0).")
@click.option("--resume", is_flag=True,
              help="Resume the requeues whose process died (dashboard or CLI), from where each stopped.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=requeue.BATCH_SIZE, show_default=True,
              help="Failed jobs examined per round trip.")
@click.option("--throttle", type=click.FloatRange(0), default=0.0, show_default=True, metavar="SECONDS",
              help="Pause between batches, to spare a busy Redis.")
def requeue_command(queue: str | None, function: str | None, exception: str | None, url: str | None, resume: bool,
                    batch_size: int, throttle: float) -> None:
    """Requeue the failed jobs of QUEUE (those of --function, failed with --exception, when given),
    each at its own priority, in batches, with a progress bar.

    The run's progress lives in Redis: the dashboard's Bulk requeues page shows it, and if this
    process dies, `rqplus requeue --resume` (or the next dashboard start) finishes it without
    requeueing any job twice. One run per queue at a time: while another run (from the dashboard
    or another `rqplus requeue`) goes through QUEUE with the same filters, this one joins it and
    shows its progress to its end (driving it should its driver die); with other filters it says
    which run is going and exits 1. Exits 0 with a summary line, 2 when Redis cannot be reached
    or the queue is unknown.
    """
    if not resume and not queue:
        raise click.UsageError("name the queue: --queue QUEUE (or --resume to finish interrupted requeues)")
    if resume and (function or exception):
        raise click.UsageError("--resume continues requeues with the filters they were started with")
    chosen, where = _chosen_url("requeue", url)
    owner = requeue.new_owner()
    with _redis_errors("requeue", where, chosen):
        client = connect(chosen, socket_connect_timeout=CHECK_TIMEOUT)
        try:
            if resume:
                started = [run for run in requeue.orphaned(client, queue) if requeue.claim(client, run.id, owner)]
                if not started:
                    click.echo("rqplus requeue: nothing to resume")
            else:
                started = [_start_or_join(client, requeue.Filters(queue, function, exception), where)]
            for run in started:
                _drive_with_progress(client, run, owner, batch_size, throttle)
        finally:
            client.close()


def _start_or_join(client: Redis, filters: requeue.Filters, where: str) -> requeue.Run:
    """The run over ``filters.queue`` to see to its end: a new one, or the one going with the same
    filters (said on stderr); another run going with other filters is an error, exit 1."""
    assert filters.queue is not None
    try:
        run, started = requeue.start(client, filters.queue, filters)
    except (UnknownQueueError, RequeueBusyError) as error:
        _failed("requeue", f"{error} at {where}")
    if started:
        return run
    going = (f"run {run.id} ({run.criteria}, by {run.user or 'rqplus requeue'}, "
             f"{run.examined:,} of {run.total:,} examined)")
    if run.filters != filters:
        click.echo(f"rqplus requeue: {going} is requeueing queue {filters.queue!r}: one bulk requeue per queue at a "
                   "time; run this again once it has ended", err=True)
        raise SystemExit(1)
    click.echo(f"rqplus requeue: joining {going}, already requeueing queue {filters.queue!r}", err=True)
    return run


def _drive_with_progress(client: Redis, run: requeue.Run, owner: str, batch_size: int, throttle: float) -> None:
    """See ``run`` to its end with a progress bar over its registry (driving it, or watching its
    driver: see rqplus.requeue.follow); prints its summary line."""
    began = time.monotonic()
    label = f"{run.queue} {run.criteria}"
    with click.progressbar(length=max(run.total, 1), label=label, file=click.get_text_stream("stderr")) as bar:
        shown = run.examined
        bar.update(shown)

        def advance(now: requeue.Run) -> None:
            nonlocal shown
            bar.update(now.examined - shown)
            shown = now.examined

        ended = requeue.follow(client, run.id, owner, batch_size=batch_size, throttle=throttle, on_batch=advance)
    if ended is None:
        _failed("requeue", f"run {run.id} was deleted")
    seconds = time.monotonic() - began
    click.echo(f"{ended.summary()} (run {run.id}, {ended.done / seconds if seconds else 0:,.0f} jobs/s)")


def _render(report: durability.DurabilityReport, where: str) -> str:
    """The report for a terminal: verdict first, then problems (with fixes), warnings, raw facts."""
    lines = [f"durable: {'yes' if report.ok else 'NO'} - {where}"]
    for title, items in (("problems", report.problems), ("warnings", report.warnings)):
        if items:
            lines += ["", f"{title}:", *(f"  - {item}" for item in items)]
    width = max(map(len, report.facts), default=0)
    lines += ["", "facts:", *(f"  {name:<{width}}  {value}" for name, value in report.facts.items())]
    return "\n".join(lines)


def _safe(error: Exception, url: str) -> str:
    """``error`` as one line, with the password of ``url`` masked should the message repeat it."""
    text = explain(error)
    password = urlsplit(url).password
    for secret in {password, unquote(password or "")} - {None, ""}:
        text = text.replace(secret, "***")
    return text


def _chosen_url(command: str, url: str | None) -> tuple[str, str]:
    """The Redis URL a command uses, and how to name it in messages (redacted, with its source)."""
    source = "--url" if url else f"${REDIS_URL_ENV}" if url_is_configured() else "default"
    try:
        chosen = redis_url(url)
    except ValueError as error:  # not a Redis URL; the message is already redacted
        _failed(command, str(error))
    return chosen, f"{redact(chosen)} (from {source})"


@contextmanager
def _redis_errors(command: str, where: str, url: str) -> Iterator[None]:
    """Redis errors in the block become one clear line on stderr and exit code 2."""
    try:
        yield
    except AuthenticationError as error:
        _failed(command, f"Redis at {where} refused the credentials: {_safe(error, url)}")
    except (ConnectionError, TimeoutError) as error:
        _failed(command, f"cannot reach Redis at {where}: {_safe(error, url)}")
    except ResponseError as error:  # e.g. INFO forbidden by an ACL
        _failed(command, f"cannot read the state of Redis at {where}: {_safe(error, url)}")
    except (RedisError, ValueError) as error:  # not a Redis speaking, a port that is not a number...
        _failed(command, f"cannot use Redis at {where}: {_safe(error, url)}")


def _failed(command: str, message: str) -> NoReturn:
    click.echo(f"rqplus {command}: error: {message}", err=True)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
