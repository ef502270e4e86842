"""rqplus/task.py: a job function's @task defaults reach every job created for it, however it is
enqueued (each path against a real Redis, the CLI and a worker as subprocesses); what the caller
gives wins; a dotted name outside the allowed modules imports nothing and gets none."""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, Callable

import pytest
from redis import Redis
from rq import Retry
from rq.job import Job
from rq_scheduler import Scheduler

import rqplus
from rqplus import DurabilityError, Queue, TaskDefaults, Worker, task
from rqplus.allowlist import resolve
from rqplus.embedded import free_port
from rqplus.task import task_defaults
from tasks import logging as events
from tasks.emails import send_email
from tasks.payments import process_payment
from tests.conftest import Processes, subprocess_env, wait_for
from tests.jobs import record, tasked
from tests.test_emails import RECIPIENT, SmtpServer

TASKED = "tests.jobs.tasked"
#: What tests.jobs.tasked declares, as a saved job shows it.
DECLARED = {"retries_left": 3, "retry_intervals": [1, 2, 3], "timeout": 42, "result_ttl": 77, "failure_ttl": 88,
            "ttl": 99, "priority": 2}
#: Options a caller gives (enqueue's names), and how the saved job shows them.
EXPLICIT = {"job_timeout": 5, "result_ttl": 6, "failure_ttl": 7, "ttl": 8, "retry": Retry(max=1, interval=9),
            "priority": 0}
SHOWN = {"retries_left": 1, "retry_intervals": [9], "timeout": 5, "result_ttl": 6, "failure_ttl": 7, "ttl": 8,
         "priority": 0}
NONE = {"retries_left": None, "retry_intervals": None, "timeout": 180, "result_ttl": None, "failure_ttl": None,
        "ttl": None, "priority": 5}


def saved(redis: Redis, job_id: str) -> dict[str, Any]:
    """The options of the job as saved in Redis (fetched anew), with its priority."""
    job = Job.fetch(job_id, connection=redis)
    shown = {name: getattr(job, name) for name in DECLARED if name != "priority"}
    shown["priority"] = job.meta["priority"]
    return shown


def as_call(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` under enqueue_call's / prepare_data's names (``timeout`` for ``job_timeout``)."""
    return {("timeout" if name == "job_timeout" else name): value for name, value in options.items()}


#: Each way to create a job: (queue, function or dotted name, enqueue-style options) -> job id.
PATHS: dict[str, Callable[[Queue, Any, dict[str, Any]], str]] = {
    "enqueue": lambda q, f, o: q.enqueue(f, "x", **o).id,
    "enqueue_call": lambda q, f, o: q.enqueue_call(f, args=("x",), **as_call(o)).id,
    "enqueue_at": lambda q, f, o: q.enqueue_at(datetime.now(UTC) + timedelta(hours=1), f, "x", **o).id,
    "enqueue_in": lambda q, f, o: q.enqueue_in(timedelta(hours=1), f, "x", **o).id,
    "enqueue_many": lambda q, f, o: q.enqueue_many([Queue.prepare_data(f, ("x",), **as_call(o))])[0].id,
}


@pytest.mark.parametrize("func", [tasked, TASKED], ids=["function", "dotted name"])
@pytest.mark.parametrize("path", PATHS)
def test_every_enqueue_path_gives_the_declared_defaults(redis, path, func):
    assert saved(redis, PATHS[path](Queue("q", connection=redis), func, {})) == DECLARED


@pytest.mark.parametrize("path", PATHS)
def test_what_the_caller_gives_wins(redis, path):
    assert saved(redis, PATHS[path](Queue("q", connection=redis), tasked, EXPLICIT)) == SHOWN
    partly = PATHS[path](Queue("q", connection=redis), tasked, {"priority": 7, "job_timeout": 3})
    assert saved(redis, partly) == {**DECLARED, "priority": 7, "timeout": 3}
    in_meta = PATHS[path](Queue("q", connection=redis), tasked, {"meta": {"priority": 1, "user": 7}})
    assert saved(redis, in_meta)["priority"] == 1


def test_a_function_without_defaults_gets_rqs_and_rqpluss(redis):
    assert task_defaults(record) is None and task_defaults("tests.jobs.record") is None
    assert saved(redis, Queue("q", connection=redis).enqueue(record, "x").id) == NONE


def test_the_decorator_returns_the_same_plain_function():
    assert tasked("x") == "x"
    assert pickle.loads(pickle.dumps(tasked)) is tasked and resolve(TASKED) is tasked
    assert tasked.__rqplus_task__ == TaskDefaults(queue="tasked", priority=2, retry=tasked.__rqplus_task__.retry,
                                                  job_timeout=42, result_ttl=77, failure_ttl=88, ttl=99)
    assert task_defaults(TASKED) is tasked.__rqplus_task__


def test_delay_enqueues_on_the_declared_queue_and_the_callers_queue_wins(redis, redis_server, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    job = tasked.delay("x")
    assert job.origin == "tasked" and Queue("tasked", connection=redis).get_job_ids() == [job.id]
    assert saved(redis, job.id) == DECLARED
    assert saved(redis, tasked.enqueue("x", job_timeout=5, priority=0).id) == {**DECLARED, "timeout": 5, "priority": 0}
    assert Queue("other", connection=redis).enqueue(tasked, "x").origin == "other"
    assert events.drain_events.delay().origin == "events"


def test_a_dotted_name_outside_the_allowed_modules_imports_nothing_and_gets_no_defaults(redis, tmp_path, monkeypatch):
    canary = tmp_path / "canary"
    monkeypatch.setenv("CANARY_PATH", str(canary))
    for name in ("tests.import_canary.run", "tests.import_canary.os.system", "tasks.nosuch.run", "tasks.__x__.y"):
        assert saved(redis, Queue("q", connection=redis).enqueue(name).id) == NONE
    assert not canary.exists()
    monkeypatch.setenv("RQPLUS_JOB_MODULES", "tasks")  # tests.jobs no longer allowed: its defaults neither
    assert saved(redis, Queue("q", connection=redis).enqueue(TASKED, "x").id) == NONE


def test_rq_scheduler_jobs_get_the_defaults_when_due(redis):
    scheduler = Scheduler(queue_name="q", connection=redis, queue_class=Queue)
    past = datetime.now(UTC) - timedelta(seconds=1)
    plain = scheduler.enqueue_at(past, tasked, "x")
    named = scheduler.enqueue_at(past, TASKED, "x")
    explicit = scheduler.enqueue_at(past, TASKED, "x", timeout=5, job_ttl=8, meta={"priority": 0})
    scheduler.enqueue_jobs()
    first, *others = Queue("q", connection=redis).get_job_ids()  # equal due times: any order among priority 2
    assert first == explicit.id and sorted(others) == sorted([plain.id, named.id])
    assert saved(redis, plain.id) == saved(redis, named.id) == DECLARED
    assert saved(redis, explicit.id) == {**DECLARED, "timeout": 5, "ttl": 8, "priority": 0}


def test_rq_enqueue_cli_gives_the_defaults(redis, redis_server):
    def rq_enqueue(job_id: str, *options: str) -> None:
        command = [sys.executable, "-m", "rq.cli", "enqueue", "--url", redis_server.url, "--queue-class",
                   "rqplus.Queue", "--job-id", job_id, *options, TASKED, "x"]
        done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    rq_enqueue("declared")
    rq_enqueue("explicit", "--timeout", "5", "--result-ttl", "6", "--retry-max", "1", "--retry-interval", "9")
    rq_enqueue("scheduled", "--schedule-in", "1h")
    assert saved(redis, "declared") == saved(redis, "scheduled") == DECLARED
    assert saved(redis, "explicit") == {**DECLARED, "timeout": 5, "result_ttl": 6, "retries_left": 1,
                                        "retry_intervals": [9]}


def test_a_requeue_keeps_what_the_job_was_created_with(redis):
    queue = Queue("tasked", connection=redis)
    job = queue.enqueue(tasked, "fail", priority=1, job_timeout=5)
    Worker([queue], connection=redis).work(burst=True)
    assert job.get_status(refresh=True) == "failed"
    queue.requeue_failed(job.id)  # what the dashboard's Requeue calls
    assert saved(redis, job.id) == {**DECLARED, "priority": 1, "timeout": 5, "retries_left": 0}


def test_the_task_modules_declare_their_policies(redis):
    """The seed's producer lines get the policies that only the enqueue helpers set before."""
    with pytest.raises(DurabilityError):  # the test Redis runs without AOF
        Queue("payments", connection=redis).enqueue(process_payment, "user_123", "49.99")
    assert redis.keys("*") == []
    email = Queue("emails", connection=redis).enqueue(send_email, "user@example.com", "Welcome!", "Thanks.")
    assert (email.retries_left, rqplus.priority_of(email)) == (5, 3)


def test_an_smtp_outage_is_retried_with_backoff_and_delivered_when_the_server_is_back(
        redis, redis_server, processes: Processes, monkeypatch):
    """The acceptance test: the seed's plain enqueue, no retry option, survives an SMTP outage."""
    smtp = SmtpServer(free_port())  # not listening yet: connections are refused
    env = {**smtp.env, "EMAIL_RETRY_MAX": "4", "EMAIL_RETRY_BASE": "1"}  # about 1, 2, 4, 8 s
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the retry policy is drawn at enqueue, here
    job = Queue("emails", connection=redis).enqueue(send_email, RECIPIENT, "Welcome!", "Thanks for signing up.")
    assert job.retries_left == 4 and job.retry_intervals == sorted(job.retry_intervals) and job.retry_intervals[0] == 1

    processes.rq_worker(redis_server.url, "emails", burst=False, extra=("--with-scheduler",), env=env)
    wait_for(lambda: job.id in Queue("emails", connection=redis).scheduled_job_registry.get_job_ids(), timeout=20)
    smtp.start()
    try:
        wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30)
    finally:
        smtp.stop()
    job.refresh()
    assert job.retries_left < 4
    [message] = smtp.mailbox.messages
    assert job.return_value() == message["Message-ID"] and message["To"] == RECIPIENT


@pytest.mark.parametrize("options, error, words", [
    ({"priority": 10}, ValueError, "priority must be an int from 0"),
    ({"priority": "1"}, TypeError, "priority must be an int from 0"),
    ({"retry": 3}, TypeError, "retry must be an rq.Retry or a zero-argument callable"),
    ({"retry": lambda attempt: None}, TypeError, "must be callable without arguments"),
    ({"ttl": -5}, ValueError, "ttl=-5 is out of range"),
    ({"ttl": 0}, ValueError, "ttl=0 is out of range"),
    ({"job_timeout": 0}, ValueError, "job_timeout=0 is out of range"),
    ({"result_ttl": -2}, ValueError, "result_ttl=-2 is out of range"),
    ({"failure_ttl": "soon"}, ValueError, "failure_ttl='soon' is not a duration"),
    ({"failure_ttl": 1.5}, TypeError, "failure_ttl must be whole seconds"),
    ({"failure_ttl": -3}, ValueError, "failure_ttl=-3 is out of range"),
    ({"durable": "yes"}, TypeError, "durable must be True or False"),
    ({"queue": ""}, ValueError, "is empty"),
    ({"queue": 3}, TypeError, "a queue name is a str"),
])
def test_bad_options_are_refused_at_decoration(options, error, words):
    with pytest.raises(error, match=words):
        task(**options)


def test_good_options_in_rqs_forms_are_accepted():
    @task(job_timeout="10m", result_ttl=0, failure_ttl=-1, ttl="1h", retry=lambda: None)
    def report() -> None: ...

    assert (report.__rqplus_task__.job_timeout, report.__rqplus_task__.ttl) == (600, 3600)
    with pytest.raises(TypeError, match="not of type"):
        task(priority=1)(Queue)


def test_a_retry_callable_returning_junk_fails_the_enqueue_and_writes_nothing(redis):
    @task(retry=lambda: 3)
    def junk() -> None: ...

    with pytest.raises(TypeError, match="returned 3: expected an rq.Retry or None"):
        Queue("q", connection=redis).enqueue(junk)
    assert redis.keys("*") == []
