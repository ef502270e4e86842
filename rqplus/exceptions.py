"""Exceptions raised by rqplus, in one place (like ``rq.exceptions``)."""

from __future__ import annotations


class DurabilityError(RuntimeError):
    """Redis is not durable enough for this queue or worker; ``problems`` lists why, with fixes.

    Raised by ``rqplus.Queue(name, durable=True)`` on enqueue (nothing is written), and by
    ``rqplus.Worker`` at start-up under ``RQPLUS_DURABILITY=strict`` (no worker key is written).
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("Redis is not durable: " + "; ".join(self.problems))
