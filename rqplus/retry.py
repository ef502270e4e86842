"""The one way rqplus (and its tasks) tell RQ that a failure is final: no retry, whatever the job's ``Retry``.

RQ retries a failed job while ``job.retries_left`` is above 0, for any exception. Some failures
would only happen again: bad input, a permanent refusal by a server, a function that is not
allowed. The code that knows calls :func:`stop_retries` before it raises; RQ's worker reads the
job's ``retries_left`` when it handles the failure, so the job is FAILED at once with the reason.

Usage::

    from rqplus.retry import stop_retries

    def send(...):
        try:
            deliver(...)
        except PermanentError:
            stop_retries()      # the running job
            raise
"""

from __future__ import annotations

from rq import get_current_job
from rq.job import Job


def stop_retries(job: Job | None = None) -> None:
    """Make ``job`` (default: the job running in this process, if any) fail without a retry.

    Usage: ``stop_retries()`` in a job function, just before raising a final error.
    """
    job = job if job is not None else get_current_job()
    if job is not None:
        job.retries_left = 0
