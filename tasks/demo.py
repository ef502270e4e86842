"""The demo of ``rqplus up --demo``: its job, the batch it enqueues, the seed's three use cases, and
the live table of its progress.

The batch is enqueued least urgent first, in one transaction, so the table shows the priority
queue at work: priority 0 finishes first although it was enqueued last. Beside it, :class:`UseCases`
sends welcome emails (to :class:`MailSink`, a local SMTP server: nothing leaves the machine),
charges payments in the sandbox gateway (each with a receipt email) and logs events to a JSON-lines file.

Usage::

    with MailSink(Path(".rqplus/mail")) as sink:      # workers get sink.environment()
        use_cases = UseCases(redis, sink, events_path=".rqplus/events.jsonl")
        progress = Progress(Queue(QUEUE, connection=redis), sys.stdout, use_cases)
        progress.start()          # enqueue a batch, or resume the one a stopped run left behind
        while not progress.refresh():
            time.sleep(0.5)
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TextIO

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from redis import Redis
from rq.job import Job

from rqplus import MAX_PRIORITY, MIN_PRIORITY, Queue
from rqplus.defaults import DEFAULT_PRIORITY
from rqplus.embedded import free_port
from rqplus.exceptions import DurabilityError
from rqplus.priority import priority_of
from tasks import emails, logging as events, payments
from tasks.gateways import SandboxGateway

#: The queue the demo uses (``rqplus up --demo`` adds it to the workers' queues).
QUEUE = "demo"
JOBS_PER_PRIORITY = 3
STATES = ("queued", "started", "finished", "failed")
PRIORITIES = range(MIN_PRIORITY, MAX_PRIORITY + 1)
#: The queue the demo drains events from (by a ``tasks.logging.drain_events`` job).
EVENTS_QUEUE = events.QUEUE
#: The use cases' queues, in the order workers serve them (before the demo's own queue).
USE_CASE_QUEUES = (payments.QUEUE, emails.QUEUE, EVENTS_QUEUE)
#: The Redis function libraries the demo's jobs call (``rqplus up --demo`` loads them).
LIBRARIES = ("tasks.payments", "tasks.gateways", "tasks.logging")
#: The demo's customers and what each pays.
CUSTOMERS = {"user_123": "49.99", "user_456": "12.50", "user_789": "100.00"}


def work(seconds: float, label: str) -> str:
    """The demo job: sleep ``seconds``, return ``label``.

    Usage: ``queue.enqueue(work, 0.3, "p0#1", priority=0)``
    """
    time.sleep(seconds)
    return label


async def fetch(seconds: float, label: str) -> str:
    """The demo coroutine job, for ``rqplus.AsyncWorker``: ``await asyncio.sleep(seconds)``, return ``label``.

    Usage: ``queue.enqueue(fetch, 0.05, "page 1")``
    """
    await asyncio.sleep(seconds)
    return label


def enqueue_batch(queue: Queue) -> list[Job]:
    """Enqueue ``JOBS_PER_PRIORITY`` jobs per priority, least urgent first, in one transaction.

    One transaction: workers are already waiting, and would grab the first jobs enqueued one by one.

    Usage: ``enqueue_batch(Queue(QUEUE, connection=redis))``
    """
    return queue.enqueue_many([
        Queue.prepare_data(work, (0.2 + 0.1 * n, f"p{priority}#{n + 1}"), priority=priority)
        for n in range(JOBS_PER_PRIORITY)
        for priority in reversed(PRIORITIES)
    ])


def job_states(queue: Queue) -> dict[str, str]:
    """Each job of the queue by id, with its state (one of ``STATES``).

    A job being fetched sits in the intermediate list: it counts as queued until it is started.

    Usage: ``job_states(queue) == {"3f2a...": "finished", ...}``
    """
    found = {
        "queued": queue.get_job_ids() + queue.intermediate_queue.get_job_ids(),
        "started": queue.started_job_registry.get_job_ids(),  # moves abandoned jobs to failed
        "failed": queue.failed_job_registry.get_job_ids(),
        "finished": queue.finished_job_registry.get_job_ids(),
    }
    # read in the order jobs move through, so a moving job is seen at least once; if twice, the later state wins
    return {job_id: state for state, ids in found.items() for job_id in ids}


def job_field(queue: Queue, job_ids: list[str], field: str) -> list[bytes | None]:
    """One field of each job's hash, in one round trip.

    Usage: ``job_field(queue, ids, "started_at")``
    """
    with queue.connection.pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.hget(queue.job_class.key_for(job_id), field)
        return pipeline.execute()


def priorities(queue: Queue, job_ids: list[str]) -> list[int]:
    """The priority of each job (the default for a job saved without one).

    Usage: ``priorities(queue, queue.get_job_ids())``
    """
    jobs = queue.job_class.fetch_many(job_ids, connection=queue.connection, serializer=queue.serializer)
    return [DEFAULT_PRIORITY if job is None else priority_of(job) for job in jobs]


def count(queue: Queue) -> dict[int, dict[str, int]]:
    """Jobs per priority and state.

    Usage: ``count(queue)[0]["finished"]``
    """
    states = job_states(queue)
    table = {priority: dict.fromkeys(STATES, 0) for priority in PRIORITIES}
    for state, priority in zip(states.values(), priorities(queue, list(states))):
        table[priority][state] += 1
    return table


def render(table: dict[int, dict[str, int]]) -> str:
    """The table as text: one row per priority, then the totals.

    Usage: ``print(render(count(queue)))``
    """
    rows = [f"{'priority':>8} " + " ".join(f"{state:>8}" for state in STATES)]
    rows += [f"{priority:>8} " + " ".join(f"{row[state]:>8}" for state in STATES) for priority, row in table.items()]
    rows.append(f"{'total':>8} " + " ".join(f"{sum(row[state] for row in table.values()):>8}" for state in STATES))
    return "\n".join(rows)


def is_done(table: dict[int, dict[str, int]]) -> bool:
    """True when no job is queued or running.

    Usage: ``is_done(count(queue))``
    """
    return not any(row["queued"] or row["started"] for row in table.values())


class MailSink:
    """A local SMTP server on a free loopback port that keeps each message as a ``.eml`` file in ``directory``.

    Usage: ``with MailSink(Path(".rqplus/mail")) as sink: env.update(sink.environment())``
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        #: Messages received since ``start``.
        self.received = 0
        self.port: int | None = None
        self._controller: Controller | None = None

    def start(self) -> MailSink:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """aiosmtpd's hook for a message: keep it, answer 250."""
        (self.directory / f"{time.time_ns()}.eml").write_bytes(envelope.original_content or b"")
        self.received += 1
        return "250 Message accepted for delivery"

    def environment(self) -> dict[str, str]:
        """What points ``tasks.emails`` at this sink: ``SMTP_HOST`` and ``SMTP_PORT``."""
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port)}

    def stop(self) -> None:
        if self._controller:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class UseCases:
    """The seed's three use cases, each through its ``tasks`` module: a login event and a welcome email
    per customer, a payment per customer (sandbox gateway, receipt emailed), and a job draining the
    events into ``events_path``.

    Usage: ``lines = UseCases(redis, sink, Path(".rqplus/events.jsonl")).start()``
    """

    def __init__(self, connection: Redis, sink: MailSink, events_path: str | os.PathLike):
        self.connection = connection
        self.sink = sink
        self.events_path = Path(events_path)
        self.jobs: list[Job] = []

    def start(self) -> list[str]:
        """Log events and enqueue the emails, payments and the drain job; one line per use case."""
        lines = []
        for user in CUSTOMERS:
            events.log_event("User logged in", connection=self.connection, user_id=user)
            self.jobs.append(emails.enqueue_email(f"{user}@example.com", "Welcome!", "Thanks for signing up.",
                                                  connection=self.connection))
        lines.append(f"Demo: {len(CUSTOMERS)} welcome emails to the local SMTP sink on port {self.sink.port} "
                     f"(kept in {self.sink.directory})")
        try:
            self.jobs += [payments.enqueue_payment(user, amount, notify_email=f"{user}@example.com",
                                                   connection=self.connection) for user, amount in CUSTOMERS.items()]
            lines.append(f"Demo: {len(CUSTOMERS)} payments on the durable queue '{payments.QUEUE}' (sandbox gateway)")
        except DurabilityError as error:
            lines.append(f"Demo: no payments: {error}")
        self.jobs.append(Queue(EVENTS_QUEUE, connection=self.connection).enqueue(
            events.drain_events, path=str(self.events_path)))
        lines.append(f"Demo: {len(CUSTOMERS)} events logged, drained by a job into {self.events_path}")
        return lines

    def done(self) -> bool:
        """True when every job of the use cases (receipts included) has ended."""
        queues = [Queue(name, connection=self.connection) for name in USE_CASE_QUEUES]
        return (all(job.get_status(refresh=True) in ("finished", "failed") for job in self.jobs)
                and not any(q.count or q.started_job_registry.count or q.scheduled_job_registry.count
                            for q in queues))

    def status(self) -> str:
        """One line: jobs ended per use case, mail received, ledger charges, events written."""
        by_queue: dict[str, list[str]] = {}
        for job in self.jobs:
            by_queue.setdefault(job.origin, []).append(job.get_status(refresh=True) or "")
        ended = {name: f"{sum(state == 'finished' for state in states)}/{len(states)}"
                 for name, states in by_queue.items()}
        written = len(self.events_path.read_text().splitlines()) if self.events_path.exists() else 0
        return (f"emails {ended.get(emails.QUEUE, '-')} sent, {self.sink.received} received by the sink | "
                f"payments {ended.get(payments.QUEUE, '-')} charged, ledger {len(SandboxGateway(self.connection).ledger())} | "
                f"events {written} lines in {self.events_path}")


class Progress:
    """The demo on one queue: its batch, and a table of it redrawn in place (on a terminal) or
    printed again when it changes (elsewhere); with ``use_cases``, their status line below it."""

    def __init__(self, queue: Queue, out: TextIO, use_cases: UseCases | None = None):
        self.queue = queue
        self.out = out
        self.use_cases = use_cases
        self._started_at = time.monotonic()
        self._done_after: float | None = None
        self._frame = ""

    def start(self) -> str:
        """Enqueue a batch, unless jobs of a previous run are still pending (then finish those).

        Returns a one-line account of what it did.
        """
        self._started_at = time.monotonic()
        pending = sum(state in ("queued", "started") for state in job_states(self.queue).values())
        if pending:
            return f"Demo: resuming {pending} jobs left in queue '{self.queue.name}' by a previous run"
        jobs = enqueue_batch(self.queue)
        lines = self.use_cases.start() if self.use_cases else []
        return "\n".join([f"Demo: enqueued {len(jobs)} jobs on queue '{self.queue.name}', priorities "
                          f"{MIN_PRIORITY}-{MAX_PRIORITY} ({MIN_PRIORITY} most urgent), least urgent first", *lines])

    def refresh(self) -> bool:
        """Show the table if it changed (with a summary once all is done); True when all is done."""
        table = count(self.queue)
        done = is_done(table) and (self.use_cases is None or self.use_cases.done())
        if not done:
            self._done_after = None
        elif self._done_after is None:
            self._done_after = time.monotonic() - self._started_at
        use_cases = "\n" + self.use_cases.status() if self.use_cases else ""
        frame = render(table) + use_cases + ("\n" + self._summary(table) if done else "")
        if frame != self._frame:
            self._draw(frame)
        return done

    def _summary(self, table: dict[int, dict[str, int]]) -> str:
        finished_ids = self.queue.finished_job_registry.get_job_ids()
        # started_at, not the registry's order: its scores are whole seconds
        started_at = [value or b"" for value in job_field(self.queue, finished_ids, "started_at")]
        order = "".join(str(priority) for _, priority in sorted(zip(started_at, priorities(self.queue, finished_ids))))
        failed = sum(row["failed"] for row in table.values())
        return (f"Demo done in {self._done_after:.1f} s: {len(finished_ids)} finished, {failed} failed.\n"
                f"Priorities in the order jobs started: {order}")

    def _draw(self, frame: str) -> None:
        if self.out.isatty() and self._frame:
            # cursor to the start of the previous frame, then clear to the end of the screen
            height = self._frame.count("\n") + 1
            self.out.write(f"\x1b[{height}F\x1b[J")
        self.out.write(frame + "\n")
        self.out.flush()
        self._frame = frame
