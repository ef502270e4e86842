"""Exceptions raised by rqplus, in one place (like ``rq.exceptions``)."""

from __future__ import annotations

import pickle


class DurabilityError(RuntimeError):
    """Redis is not durable enough for this queue or worker; ``problems`` lists why, with fixes.

    Raised by ``rqplus.Queue(name, durable=True)`` on enqueue (nothing is written), and by
    ``rqplus.Worker`` at start-up under ``RQPLUS_DURABILITY=strict`` (no worker key is written).
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("Redis is not durable: " + "; ".join(self.problems))


class ForbiddenJobError(Exception):
    """A job names a function (or callback) a worker must not run: not defined in an allowed module.

    Raised by :func:`rqplus.allowlist.resolve` and by :class:`rqplus.job.Job` when RQ asks for the
    function; the worker fails such a job, without a retry, with this error's text.
    """


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a class or function the worker does not build: refused before anything of it runs.

    Raised by :class:`rqplus.serializers.SafePickleSerializer`; the job fails with this text.
    """


class WorkLoopError(RuntimeError):
    """An ``rqplus.Worker``'s work loop stopped on an unexpected error (its ``__cause__``).

    Raised by ``Worker.work`` after RQ's teardown, so ``rq worker`` exits 1: a worker that quits for
    any reason but a requested stop (or a finished burst) exits non-zero.
    """


class UnknownQueueError(ValueError):
    """A bulk requeue named a queue Redis does not know (not in RQ's set of queues, no failed jobs).

    Raised by :func:`rqplus.requeue.start`; the dashboard answers 404, ``rqplus requeue`` exits 2.
    """


class RequeueBusyError(RuntimeError):
    """A bulk requeue could neither start nor join: the queue's active key names a run that is not
    running (one being started for seconds, or deleted by hand).

    Raised by :func:`rqplus.requeue.start`; the dashboard answers 409, ``rqplus requeue`` exits 2.
    """


class PoolError(RuntimeError):
    """A worker pool gave up: one slot's workers kept exiting right after their start.

    Raised by :meth:`rqplus.pool.WorkerPool.check`; ``rqplus worker`` then drains the other workers
    and exits 1, ``rqplus up`` stops.
    """


class JobStopped(Exception):
    """RQ's stop-job command (``rq.command.send_stop_job_command``) reached a job that a
    ThreadWorker or AsyncWorker runs: raised in its thread, or its coroutine cancelled."""


class LibraryError(RuntimeError):
    """Redis lacks one of rqplus's function libraries and this user may not load it, or the user may
    not call functions at all; the message names the fix (``rqplus check --install`` with an admin
    user, or the ACL rules to grant).

    Raised by :meth:`rqplus.functions.Library.call` (any rqplus path that runs Lua) and ``install``.
    """
