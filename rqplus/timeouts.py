"""Job timeouts for workers that run jobs in threads: one watchdog thread instead of a timer per job.

RQ stops a job at its timeout with SIGALRM (main thread only) or, in threads, with a timer thread
per job that raises ``JobTimeoutException`` inside the job's thread. :class:`Watchdog` does the
latter for every job of a worker from one thread, and reports a job that does not stop (blocked
in C code) so that its worker can abandon it.

Usage::

    dog = Watchdog(on_abandon=worker.abandon)
    dog.watch(run)      # in the job's thread, as it enters the job's function
    ...
    dog.unwatch(run)    # as it leaves
"""

from __future__ import annotations

import ctypes
import functools
import heapq
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rq.timeouts import JobTimeoutException

if TYPE_CHECKING:
    from rqplus.thread_worker import Running

#: Seconds a job may run past its timeout (the thread was told to stop) before it is abandoned.
ABANDON_GRACE = 5.0


class Watchdog:
    """One thread that stops jobs past their timeout, for workers that run jobs in threads.

    At a job's deadline, ``JobTimeoutException`` is raised in its thread (as RQ's
    ``TimerDeathPenalty`` does, without a timer thread per job); a job whose function has still
    not returned ``ABANDON_GRACE`` seconds later (blocked in C code, or catching the exception) is
    handed to ``on_abandon``.

    Usage: ``dog = Watchdog(worker.abandon); dog.watch(run); ...; dog.unwatch(run)``
    """

    def __init__(self, on_abandon: Callable[[Running], None], grace: float = ABANDON_GRACE) -> None:
        self.on_abandon, self.grace = on_abandon, grace
        self._due: list[tuple[float, int, Running]] = []
        self._changed = threading.Condition()
        self.lock = self._changed  # held while a thread enters or leaves a job's function
        self._thread: threading.Thread | None = None

    def watch(self, run: Running) -> None:
        """The calling thread enters ``run``'s function now."""
        with self._changed:
            run.ident = threading.get_ident()
            if run.deadline is None:
                return
            heapq.heappush(self._due, (run.deadline, id(run), run))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="rqplus-watchdog", daemon=True)
                self._thread.start()
            self._changed.notify()

    def unwatch(self, run: Running) -> None:
        """``run``'s function has returned or raised."""
        with self._changed:
            run.ident = None

    def _serve(self) -> None:
        while True:
            with self._changed:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                deadline, _, run = heapq.heappop(self._due)
                if run.ident is None:
                    continue
                if deadline == run.deadline:  # first: stop it
                    raise_in_thread(run.ident, timeout_exception(run.job.timeout))
                    heapq.heappush(self._due, (deadline + self.grace, id(run), run))
                    continue
            self.on_abandon(run)


@functools.cache
def timeout_exception(timeout: int | None) -> type[JobTimeoutException]:
    """``JobTimeoutException`` carrying RQ's message for ``timeout``, raisable by class alone."""
    message = f"Task exceeded maximum timeout value ({timeout} seconds)"
    # Exception's own __init__: RQ's TimerDeathPenalty replaces JobTimeoutException.__init__ with
    # one that prints the timeout of the last callback it guarded
    return type("JobTimeoutException", (JobTimeoutException,), {
        "__init__": lambda self, *args: Exception.__init__(self, message),
        "__module__": JobTimeoutException.__module__})


def raise_in_thread(ident: int, exception: type[BaseException]) -> None:
    """Raise ``exception`` in thread ``ident`` at its next Python instruction (RQ's way, in
    ``TimerDeathPenalty``; a thread blocked in C code sees it once the call returns)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exception))
