"""rqplus.timeouts.Watchdog: stops a thread's job at its deadline, reports one that does not stop."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from rq.timeouts import JobTimeoutException, TimerDeathPenalty

from rqplus.timeouts import Watchdog, timeout_exception


def running(seconds: float) -> SimpleNamespace:
    return SimpleNamespace(deadline=time.monotonic() + seconds, ident=None, job=SimpleNamespace(timeout=seconds))


def run_in_thread(dog: Watchdog, run: SimpleNamespace, body) -> dict:
    outcome: dict = {}

    def target() -> None:
        dog.watch(run)
        try:
            body()
            outcome["returned"] = True
        except JobTimeoutException as error:
            outcome["raised"] = str(error)
        finally:
            dog.unwatch(run)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_a_busy_job_is_stopped_at_its_deadline_with_rqs_message():
    abandoned = []
    dog = Watchdog(abandoned.append, grace=5)
    outcome = run_in_thread(dog, running(0.3), lambda: [None for _ in iter(int, 1)])  # spins until stopped
    outcome["thread"].join(10)
    assert outcome["raised"] == "Task exceeded maximum timeout value (0.3 seconds)" and abandoned == []


def test_a_job_blocked_past_its_grace_is_reported_and_one_that_ends_in_time_is_not():
    abandoned = []
    dog = Watchdog(abandoned.append, grace=0.3)
    blocked, quick = running(0.2), running(5)
    run_in_thread(dog, blocked, lambda: time.sleep(3))      # in C code: the exception waits for the sleep
    done = run_in_thread(dog, quick, lambda: time.sleep(0.1))
    deadline = time.monotonic() + 5
    while not abandoned and time.monotonic() < deadline:
        time.sleep(0.05)
    assert abandoned == [blocked]
    done["thread"].join(5)
    assert done.get("returned") and quick.ident is None


@pytest.mark.parametrize("timeout", [1, 180])
def test_the_exception_class_carries_the_timeout_and_is_rqs(timeout):
    TimerDeathPenalty(60, JobTimeoutException)  # RQ rewrites JobTimeoutException.__init__ for its message
    error = timeout_exception(timeout)()
    assert isinstance(error, JobTimeoutException) and str(error) == f"Task exceeded maximum timeout value ({timeout} seconds)"
