"""rqplus/allowlist.py: a job runs only a callable defined in an allowed module, judged on the object
that would be called, never on its name; forged jobs fail with the rule and run nothing."""

from __future__ import annotations

import pathlib
import re
import pickle

import fakeredis
import pytest
from rq import Callback, Queue as RQQueue
from rq.job import Job
from rq.serializers import JSONSerializer

from rqplus.allowlist import allowed_modules, is_allowed, refusal, resolve, resolve_job_function
from rqplus.exceptions import ForbiddenJobError
from tests import jobs
from tests.jobs import ran

MODULES = ("tasks", "tests.jobs")


@pytest.mark.parametrize("dotted, allowed", [
    ("tasks.emails.send_email", True), ("tasks.x", True), ("tasks", False), ("tasksevil.run", False),
    ("os.system", False), ("print", False), ("myapp.jobs.report", True), ("myapp.jobsx.report", False),
])
def test_prefix_rules(dotted, allowed):
    assert is_allowed(dotted, ("tasks", "myapp.jobs")) is allowed


def test_modules_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("RQPLUS_JOB_MODULES")
    assert allowed_modules() == ("tasks",)
    monkeypatch.setenv("RQPLUS_JOB_MODULES", " tasks , billing.jobs ,")
    assert allowed_modules() == ("tasks", "billing.jobs")


@pytest.mark.parametrize("dotted, rule", [
    ("tasks.settings.os.system", "steps through module os"),
    ("tasks.demo.os.system", "steps through module os"),
    ("tasks.logging.os.system", "steps through module os"),
    ("tests.jobs.os.path.os.system", "steps through module os"),  # a walk of three steps
    ("tasks.payments.importlib.import_module", "steps through module importlib"),
    ("builtins.exec", "not in an allowed module"),
    ("builtins.eval", "not in an allowed module"),
    ("os.system", "not in an allowed module"),
    ("exec", "not in an allowed module"),
    ("tasks.__builtins__.exec", "dunder attributes are never resolved"),
    ("tests.jobs.record.__globals__", "dunder attributes are never resolved"),
    ("tests.jobs.Recorder.__class__.__subclasses__", "dunder attributes are never resolved"),
    ("tests.jobs.Recorder.__init__", "dunder attributes are never resolved"),
    ("tests.jobs.reexported", "defined in posix"),  # `from os import getpid as reexported`
    ("tests.jobs.Recorder.shell", "defined in posix"),  # staticmethod(os.system) on an allowed class
    ("tests.jobs.RAN_KEY.join", "steps through str object"),
    ("tasks.demo", "is not a function (module)"),
    ("tests.jobs.record()", "is not a dotted name"),
])
def test_forged_names_are_refused_with_the_rule(dotted, rule):
    with pytest.raises(ForbiddenJobError, match=re.escape(rule)):
        resolve(dotted, MODULES)


def test_a_module_outside_the_allow_list_is_never_imported(tmp_path, monkeypatch):
    canary = tmp_path / "canary"
    monkeypatch.setenv("CANARY_PATH", str(canary))
    with pytest.raises(ForbiddenJobError):
        resolve("tests.import_canary.run", MODULES)
    assert not canary.exists()


@pytest.mark.parametrize("dotted", ["tasks.nosuch.run", "tests.jobs.nosuch"])
def test_a_missing_function_is_an_import_error_naming_it(dotted):
    with pytest.raises(ImportError, match=dotted):
        resolve(dotted, MODULES)


def test_allowed_callables_resolve_to_the_object_defined_there():
    assert resolve("tests.jobs.record", MODULES) is jobs.record
    assert resolve("tests.jobs.Recorder.static", MODULES) is jobs.Recorder.static
    assert resolve("tests.jobs.Recorder.klass", MODULES) == jobs.Recorder.klass
    assert resolve("tests.jobs.record_async", MODULES) is jobs.record_async
    assert resolve("tests.jobs.Recorder", MODULES) is jobs.Recorder
    bound = resolve_job_function("bound", jobs.Recorder("p-"), MODULES)
    assert bound.__func__ is jobs.Recorder.bound and bound.__self__.prefix == "p-"


@pytest.mark.parametrize("instance, name, rule", [
    (pathlib.Path("/tmp/x"), "touch", "pathlib.PosixPath is not defined in an allowed module"),
    ("rm -rf /", "format", "builtins.str is not defined in an allowed module"),
    (jobs.Recorder("p"), "shell", "defined in posix"),
    (jobs.Recorder("p"), "__class__", "dunder attributes are never resolved"),
    (jobs, "record", "not defined in an allowed module"),  # a module as the instance
])
def test_bound_methods_are_judged_on_the_instance_and_the_method(instance, name, rule):
    with pytest.raises(ForbiddenJobError, match=rule):
        resolve_job_function(name, instance, MODULES)


def test_refusal_names_the_function_and_the_setting():
    job = Job.create("os.system", args=("id",), connection=fakeredis.FakeRedis())
    reason = refusal(job, ("tasks",))
    assert reason.startswith("ForbiddenJobError: function os.system")
    assert "RQPLUS_JOB_MODULES" in reason
    assert refusal(Job.create("tasks.demo.work", connection=fakeredis.FakeRedis()), ("tasks",)) is None


def test_refusal_judges_callbacks_too():
    job = Job.create("tests.jobs.record", args=("x",), on_failure=Callback("os.system"),
                     connection=fakeredis.FakeRedis())
    assert refusal(job, MODULES) == ("ForbiddenJobError: function os.system is not in an allowed module "
                                     "(tasks, tests.jobs); not imported, not run. Allow it with RQPLUS_JOB_MODULES")


def test_unreadable_job_data_is_a_refusal_not_a_crash():
    job = Job.create("tasks.demo.work", connection=fakeredis.FakeRedis())
    job.data = b"not a pickle"
    assert refusal(job, ("tasks",)).startswith("DeserializationError: the job's data cannot be read")


class _Touch:
    """Unpickles as ``os.system("touch <path>")``: a forged argument."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.path}",)


FORGED_NAMES = [
    "tasks.settings.os.system", "tasks.demo.os.system", "tasks.logging.os.system", "tests.jobs.os.system",
    "tests.jobs.os.path.os.system", "os.system", "builtins.exec", "builtins.eval", "tasks.__builtins__.exec",
    "tests.jobs.Recorder.__class__.__subclasses__", "tests.jobs.Recorder.shell",
]


@pytest.mark.parametrize("serializer, option", [(None, ()), (JSONSerializer, ("-S", "rq.serializers.JSONSerializer"))])
def test_forged_jobs_fail_with_the_rule_and_run_nothing(redis, redis_server, processes, tmp_path, serializer, option):
    marker, canary = tmp_path / "pwned", tmp_path / "canary"
    shell = f"touch {marker}"
    python = f"open({str(marker)!r}, 'w')"
    stock = RQQueue("work", connection=redis, serializer=serializer)  # anyone with Redis access can do this
    forged = {name: stock.enqueue(name, python if name.endswith(("exec", "eval")) else shell) for name in FORGED_NAMES}
    forged["importlib"] = stock.enqueue("tasks.payments.importlib.import_module", "tests.import_canary")
    forged["outside"] = stock.enqueue("tests.import_canary.run")
    forged["callback"] = stock.enqueue("tests.jobs.record", "callback-job", on_success=Callback("os.system"))
    if serializer is None:  # an instance only pickle can carry: a bound method of a forbidden class
        forged["instance"] = stock.enqueue(pathlib.Path(marker).touch)
    allowed = [stock.enqueue("tests.jobs.record", "function"), stock.enqueue("tests.jobs.Recorder.static", "static"),
               stock.enqueue("tests.jobs.Recorder.klass", "class"), stock.enqueue("tests.jobs.record_async", "async")]
    if serializer is None:
        allowed.append(stock.enqueue(jobs.Recorder("bound-").bound, "method"))
    # pathlib.PosixPath may be unpickled here, so that the method check itself is what refuses it
    worker = processes.rq_worker(redis_server.url, "work", extra=option,
                                 env={"CANARY_PATH": str(canary), "RQPLUS_PICKLE_CLASSES": "pathlib.PosixPath"})
    out = processes.finish(worker)
    assert worker.returncode == 0, out
    for name, job in forged.items():
        assert job.get_status(refresh=True) == "failed", name
        assert job.latest_result().exc_string.startswith("ForbiddenJobError: "), (name, job.latest_result().exc_string)
    assert "steps through module os" in forged["tasks.settings.os.system"].latest_result().exc_string
    if serializer is None:
        assert "pathlib.PosixPath is not defined" in forged["instance"].latest_result().exc_string
    assert not marker.exists() and not canary.exists()
    assert "callback-job" not in ran(redis)
    assert all(job.get_status(refresh=True) == "finished" for job in allowed), out
    expected = {"function", "static", "Recorder:class", "async"} | ({"bound-method"} if serializer is None else set())
    assert set(ran(redis)) == expected


def test_a_forged_reduce_in_the_arguments_fails_the_job_before_it_runs(redis, redis_server, processes, tmp_path):
    marker = tmp_path / "pwned"
    job = RQQueue("work", connection=redis).enqueue("tests.jobs.record", "placeholder")
    redis.hset(job.key, "data", pickle.dumps(("tests.jobs.record", None, (_Touch(marker),), {})))
    fine = RQQueue("work", connection=redis).enqueue("tests.jobs.record", "after")
    worker = processes.rq_worker(redis_server.url, "work")
    out = processes.finish(worker)
    assert worker.returncode == 0, out
    assert not marker.exists()
    assert job.get_status(refresh=True) == "failed"
    reason = job.latest_result().exc_string
    assert "DeserializationError" in reason and "the pickle names posix.system, which is not loaded" in reason, reason
    assert fine.get_status(refresh=True) == "finished" and ran(redis) == ["after"]
