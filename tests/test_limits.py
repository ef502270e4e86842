"""Input limits (rqplus/limits.py: durations, job ids, queue names) on every way in, against a
real redis-server: each refusal is a clear TypeError/ValueError and leaves every key as it was (a
DUMP of each before and after); the bounds themselves work end to end in real worker processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from rq import Queue as RQQueue
from rq.exceptions import TimeoutFormatError
from rq.job import Dependency, JobStatus

from rqplus import Queue, task
from rqplus.cli import main
from rqplus.defaults import MAX_DURATION, MAX_JOB_ID
from rqplus.limits import DURATIONS, DurationFormatError, check_queue_name
from tests.test_queue import JOB, snapshot

#: Every way a producer creates a job, each given the options under test.
WAYS_IN = {
    "enqueue": lambda q, **o: q.enqueue(JOB, "x", **o),
    "enqueue_call": lambda q, **o: q.enqueue_call(JOB, args=("x",), **{_call(k): v for k, v in o.items()}),
    "enqueue_at": lambda q, **o: q.enqueue_at(datetime(2030, 1, 1, tzinfo=UTC), JOB, "x", **o),
    "enqueue_in": lambda q, **o: q.enqueue_in(timedelta(minutes=5), JOB, "x", **o),
    "enqueue_many": lambda q, **o: q.enqueue_many([
        Queue.prepare_data(JOB, ("ok",)), Queue.prepare_data(JOB, ("x",), **{_call(k): v for k, v in o.items()})]),
    # EnqueueData made by RQ's own prepare_data: checked when the job is created, before the batch is sent
    "enqueue_many (rq's prepare_data)": lambda q, **o: q.enqueue_many([
        Queue.prepare_data(JOB, ("ok",)), RQQueue.prepare_data(JOB, ("x",), **{_call(k): v for k, v in o.items()})]),
}


def _call(option: str) -> str:
    """enqueue's name of an option -> enqueue_call's and prepare_data's (RQ's ``timeout``)."""
    return "timeout" if option == "job_timeout" else option


@pytest.fixture
def populated(redis):
    """The private Redis holding a queue with a job already, so that "nothing written" is checked
    against a queue that exists (its list, its registries' keys)."""
    Queue("q", connection=redis).enqueue(JOB, "already there", job_id="first")
    return redis


BAD_OPTIONS = [
    ({"job_timeout": -5}, ValueError,
     r"job_timeout=-5 is out of range: seconds from 1 to 315,360,000 \(10 years\), or -1"),
    ({"job_timeout": 0}, ValueError, "job_timeout=0 is out of range"),
    ({"job_timeout": 10**30}, ValueError, "job_timeout=1000000000000000000000000000000 is out of range"),
    ({"job_timeout": MAX_DURATION + 1}, ValueError, "out of range"),
    ({"job_timeout": "3651d"}, ValueError, "job_timeout='3651d' is out of range"),
    ({"job_timeout": "-1m"}, ValueError, "job_timeout='-1m' is out of range"),
    ({"job_timeout": "1.5h"}, DurationFormatError, "job_timeout='1.5h' is not a duration"),
    ({"job_timeout": "١٠"}, DurationFormatError, "is not a duration"),          # digits, but not ASCII ones
    ({"job_timeout": 1.5}, TypeError, "job_timeout must be whole seconds"),
    ({"job_timeout": True}, TypeError, "job_timeout must be whole seconds"),
    ({"result_ttl": 10**20}, ValueError, "result_ttl=100000000000000000000 is out of range: seconds from 0 to"),
    ({"result_ttl": -2}, ValueError, "result_ttl=-2 is out of range"),
    ({"failure_ttl": -5}, ValueError, "failure_ttl=-5 is out of range"),
    ({"failure_ttl": 10**20}, ValueError, "failure_ttl=100000000000000000000 is out of range"),
    ({"ttl": 0}, ValueError, "ttl=0 is out of range: seconds from 1 to 315,360,000 \\(10 years\\)$"),
    ({"ttl": -1}, ValueError, "ttl=-1 is out of range"),
    ({"ttl": 10**20}, ValueError, "ttl=100000000000000000000 is out of range"),
    ({"job_id": "x" * 100_000}, ValueError, r"job id 'x{40}\.\.\.\(100,000 characters\)' is not 1 to 256"),
    ({"job_id": "x" * (MAX_JOB_ID + 1)}, ValueError, "is not 1 to 256 ASCII letters"),
    ({"job_id": "a.b"}, ValueError, "job id 'a.b' is not 1 to 256 ASCII letters, digits"),
    ({"job_id": "rq:job:x"}, ValueError, "job id 'rq:job:x' is not"),
    ({"job_id": "ordre-é"}, ValueError, "is not 1 to 256 ASCII"),
    ({"job_id": 42}, TypeError, "a job id is a str, not int"),
    ({"depends_on": "x" * 300}, ValueError, "depends_on: job id"),
    ({"depends_on": ["ok", Dependency(["a b"])]}, ValueError, "depends_on: job id 'a b'"),
]


@pytest.mark.parametrize("way", WAYS_IN)
@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=[str(o) for o, _, _ in BAD_OPTIONS])
def test_options_out_of_bounds_are_refused_and_nothing_is_written(populated, way, options, error, message):
    if way == "enqueue_many (rq's prepare_data)" and "depends_on" in options:
        pytest.skip("RQ's enqueue_many saves the jobs without dependencies before it creates the others")
    before = snapshot(populated)
    with pytest.raises(error, match=message):
        WAYS_IN[way](Queue("q", connection=populated), **options)
    assert snapshot(populated) == before


def test_a_bad_duration_string_is_still_rqs_timeout_format_error(redis):
    with pytest.raises(TimeoutFormatError):
        Queue("q", connection=redis).enqueue(JOB, "x", job_timeout="soon")


def test_a_queues_default_timeout_is_held_to_the_same_bounds(populated):
    before = snapshot(populated)
    with pytest.raises(ValueError, match="default_timeout=1000000000000000000000000000000 is out of range"):
        Queue("q", connection=populated, default_timeout=10**30).enqueue(JOB, "x")
    assert snapshot(populated) == before
    assert Queue("q", connection=populated, default_timeout="2h").enqueue(JOB, "x").timeout == 7200


@pytest.mark.parametrize("way", WAYS_IN)
def test_rqs_forms_and_the_bounds_themselves_are_accepted(redis, way):
    queue = Queue("q", connection=redis)
    for options, stored in (
            ({"job_timeout": "1h", "result_ttl": "30m", "failure_ttl": "2d", "ttl": "90s"}, (3600, 1800, 172800, 90)),
            ({"job_timeout": " 90 ", "result_ttl": 0, "failure_ttl": "-1", "ttl": 1}, (90, 0, -1, 1)),
            ({"job_timeout": -1, "result_ttl": -1, "failure_ttl": 0, "ttl": None}, (-1, -1, 0, None)),
            ({"job_timeout": MAX_DURATION, "result_ttl": MAX_DURATION, "failure_ttl": MAX_DURATION,
              "ttl": f"{MAX_DURATION // 86400}d"}, (MAX_DURATION,) * 4)):
        job = WAYS_IN[way](queue, **options, job_id="j" * MAX_JOB_ID)
        job = job[-1] if isinstance(job, list) else job
        job.refresh()  # as stored in Redis
        assert (job.timeout, job.result_ttl, job.failure_ttl, job.ttl) == stored, options
        assert job.id == "j" * MAX_JOB_ID
        job.delete()


@pytest.mark.parametrize("name, error, message", [
    ("emails\x00", ValueError, r"holds '\\x00': a queue name is ASCII letters, digits, '_', '-', '.' and ':'"),
    ("<svg onload=alert(1)>", ValueError, "holds ' ', '\\(', '\\)', '<', '=', '>'"),
    ("emails high", ValueError, "holds ' '"),
    ("émails", ValueError, "holds 'é'"),
    ("a/b", ValueError, "holds '/'"),
    ("rq:job:abc", ValueError, "starts with 'rq:', a prefix of RQ's keys"),
    ("rqplus:window:q", ValueError, "starts with 'rqplus:'"),
    ("emails::high", ValueError, "has an empty ':'-separated part"),
    ("emails:", ValueError, "has an empty ':'-separated part"),
    ("emails:intermediate", ValueError,
     "would be a key RQ or rqplus derives from queue 'emails' \\(its 'intermediate' key\\)"),
    ("q:intermediate:first_seen:abc", ValueError, "derives from queue 'q' \\(its 'intermediate' key\\)"),
    ("emails:levels", ValueError, "derives from queue 'emails' \\(its 'levels' key\\)"),
    ("", ValueError, "is empty"),
    ("   ", ValueError, "is empty"),
    ("x" * 1001, ValueError, "1,001 characters is over the 1000 character limit"),
    (b"emails", TypeError, "a queue name is a str"),
])
def test_queue_names_that_cannot_name_a_queue_are_refused_everywhere(populated, name, error, message):
    before = snapshot(populated)
    for way in WAYS_IN.values():
        with pytest.raises(error, match=message):
            way(Queue(name, connection=populated))
    with pytest.raises(error, match=message):
        task(queue=name)
    if isinstance(name, str) and name:
        for command in (["worker", "--burst", name], ["up", name]):
            result = CliRunner().invoke(main, command)
            assert result.exit_code == 2 and "Invalid value for '[QUEUES]...'" in result.output, result.output
    assert snapshot(populated) == before


def test_names_with_colons_dots_and_dashes_are_queue_names(redis):
    for name in ("emails:high", "q.1", "high-priority", "levels", "intermediate", "levels:daily", "rqx:foo",
                 "reports:intermediate_results", "x" * 1000):
        check_queue_name(name)
        assert Queue(name, connection=redis).enqueue(JOB, "x").origin == name


@pytest.mark.parametrize("options, error, message", [
    ({"job_timeout": 10**30}, ValueError, "job_timeout=1000000000000000000000000000000 is out of range"),
    ({"failure_ttl": -5}, ValueError, "failure_ttl=-5 is out of range"),
    ({"ttl": "1y"}, DurationFormatError, "ttl='1y' is not a duration"),
])
def test_task_defaults_are_held_to_the_same_bounds(options, error, message):
    with pytest.raises(error, match=message):
        task(**options)


@pytest.mark.parametrize("worker_class", ["rqplus.Worker", "rqplus.ThreadWorker"])
def test_jobs_at_the_bounds_run_in_real_workers(redis, redis_server, processes, worker_class):
    """The longest durations accepted are ones workers and Redis take: a forked work-horse's
    alarm, a thread worker's watchdog, EXPIRE of the result and of the failed job."""
    queue = Queue("q", connection=redis)
    limits = {duration.option: MAX_DURATION for duration in DURATIONS}
    done = queue.enqueue("tests.jobs.record", "done", **limits)
    failed = queue.enqueue("tests.jobs.fail", "failed", **limits)
    processes.finish(processes.rq_worker(redis_server.url, "q", worker_class=worker_class))
    assert (done.get_status(refresh=True), failed.get_status(refresh=True)) == (JobStatus.FINISHED, JobStatus.FAILED)
    assert done.return_value() == "done"
    assert MAX_DURATION - 60 < redis.ttl(done.key) <= MAX_DURATION      # the result kept for result_ttl
    assert MAX_DURATION - 60 < redis.ttl(failed.key) <= MAX_DURATION    # the failed job for failure_ttl
