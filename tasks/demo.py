"""The demo of ``rqplus up --demo``: its job, the batch it enqueues, and the live table of its progress.

The batch is enqueued least urgent first, in one transaction, so the table shows the priority
queue at work: priority 0 finishes first although it was enqueued last.

Usage::

    progress = Progress(Queue(QUEUE, connection=redis), sys.stdout)
    progress.start()          # enqueue a batch, or resume the one a stopped run left behind
    while not progress.refresh():
        time.sleep(0.5)
"""

from __future__ import annotations

import time
from typing import TextIO

from rq.job import Job

from rqplus import MAX_PRIORITY, MIN_PRIORITY, Queue
from rqplus.defaults import DEFAULT_PRIORITY
from rqplus.priority import PRIORITY_KEY

#: The queue the demo uses (``rqplus up --demo`` adds it to the workers' queues).
QUEUE = "demo"
JOBS_PER_PRIORITY = 3
STATES = ("queued", "started", "finished", "failed")
PRIORITIES = range(MIN_PRIORITY, MAX_PRIORITY + 1)


def work(seconds: float, label: str) -> str:
    """The demo job: sleep ``seconds``, return ``label``.

    Usage: ``queue.enqueue(work, 0.3, "p0#1", priority=0)``
    """
    time.sleep(seconds)
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
    return [int(value) if value is not None else DEFAULT_PRIORITY for value in job_field(queue, job_ids, PRIORITY_KEY)]


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


class Progress:
    """The demo on one queue: its batch, and a table of it redrawn in place (on a terminal) or
    printed again when it changes (elsewhere)."""

    def __init__(self, queue: Queue, out: TextIO):
        self.queue = queue
        self.out = out
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
        return (f"Demo: enqueued {len(jobs)} jobs on queue '{self.queue.name}', "
                f"priorities {MIN_PRIORITY}-{MAX_PRIORITY} ({MIN_PRIORITY} most urgent), least urgent first")

    def refresh(self) -> bool:
        """Show the table if it changed (with a summary once all is done); True when all is done."""
        table = count(self.queue)
        done = is_done(table)
        if not done:
            self._done_after = None
        elif self._done_after is None:
            self._done_after = time.monotonic() - self._started_at
        frame = render(table) + ("\n" + self._summary(table) if done else "")
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
