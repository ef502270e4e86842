"""rqplus/retry.py: a final failure is not retried; any other failure is, as RQ does (real Redis, real worker)."""

from __future__ import annotations

import pytest
from rq import Retry

from rqplus import Queue, Worker
from tests.jobs import ran


@pytest.mark.parametrize("function, runs", [("tests.jobs.fail", 3), ("tests.jobs.fail_final", 1)])
def test_only_final_failures_skip_the_retries(redis, function, runs):
    job = Queue("q", connection=redis).enqueue(function, "boom", retry=Retry(max=2))
    Worker(["q"], connection=redis).work(burst=True)
    assert job.get_status(refresh=True) == "failed"
    assert ran(redis) == ["boom"] * runs
