"""rqplus.AsyncWorker: coroutine jobs at once on one loop, their results and timeouts, plain jobs beside them."""

from __future__ import annotations

import pytest

from rqplus import AsyncWorker, Queue
from tests.conftest import overlapped
from tests.jobs import REDIS_URL_ENV, ran
from tests.pickles import assert_forgeries_change_nothing


@pytest.fixture(autouse=True)
def _jobs_record_here(redis_server, monkeypatch):
    monkeypatch.setenv(REDIS_URL_ENV, redis_server.url)


def test_coroutines_run_at_once_and_their_results_are_stored(redis):
    queue = Queue("work", connection=redis)
    jobs = [queue.enqueue("tests.jobs.sleep_async", f"a{n}", 1.0) for n in range(50)]
    AsyncWorker([queue], connection=redis, concurrency=100).work(burst=True)
    assert [job.return_value() for job in jobs] == [f"a{n}" for n in range(50)]
    assert overlapped(jobs)
    assert queue.finished_job_registry.count == 50 and queue.started_job_registry.count == 0


def test_a_coroutine_past_its_timeout_is_cancelled_and_its_siblings_finish(redis):
    queue = Queue("work", connection=redis)
    late = queue.enqueue("tests.jobs.sleep_async", "late", 60, job_timeout=1)
    siblings = [queue.enqueue("tests.jobs.sleep_async", f"s{n}", 2.0) for n in range(3)]
    AsyncWorker([queue], connection=redis, concurrency=10).work(burst=True)
    assert late.get_status(refresh=True) == "failed"
    assert "JobTimeoutException: Task exceeded maximum timeout value (1 seconds)" in late.latest_result().exc_string
    assert all(job.get_status(refresh=True) == "finished" for job in siblings)


def test_rq_worker_cli_runs_plain_and_coroutine_jobs_side_by_side(redis, redis_server, processes):
    queue = Queue("work", connection=redis)
    coroutines = [queue.enqueue("tests.jobs.sleep_async", f"a{n}", 1.0) for n in range(4)]
    plain = [queue.enqueue("tests.jobs.record", f"p{n}", 1.0) for n in range(4)]
    failing = queue.enqueue("tests.jobs.fail", "f")
    proc = processes.rq_worker(redis_server.url, "work", worker_class="rqplus.AsyncWorker",
                               env={"RQPLUS_CONCURRENCY": "16", REDIS_URL_ENV: redis_server.url})
    out = processes.finish(proc, 60)
    assert proc.returncode == 0, out
    assert overlapped(coroutines + plain)
    assert [job.return_value() for job in coroutines + plain] == [f"a{n}" for n in range(4)] + [f"p{n}" for n in range(4)]
    assert failing.get_status(refresh=True) == "failed" and "failed on purpose" in failing.latest_result().exc_string
    assert sorted(ran(redis)) == sorted([f"a{n}" for n in range(4)] + [f"p{n}" for n in range(4)] + ["f"])


def test_forged_pickles_change_nothing_in_the_worker_that_reads_them(redis, redis_server, processes):
    """Issue 19 on an AsyncWorker process: see tests/pickles.py's assert_forgeries_change_nothing."""
    processes.rq_worker(redis_server.url, "work", worker_class="rqplus.AsyncWorker", burst=False,
                        env={"RQPLUS_CONCURRENCY": "4", REDIS_URL_ENV: redis_server.url})
    assert_forgeries_change_nothing(redis)
