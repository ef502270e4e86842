"""rqplus/allowlist.py: only functions from allowed modules run; forged jobs fail, nothing imported."""

from __future__ import annotations

import fakeredis
import pytest
from rq import Queue as RQQueue
from rq.job import Job
from rq.serializers import JSONSerializer

from rqplus.allowlist import allowed_modules, is_allowed, refusal
from tests.jobs import ran


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


def test_refusal_names_the_function_and_the_setting():
    job = Job.create("os.system", args=("id",), connection=fakeredis.FakeRedis())
    reason = refusal(job, ("tasks",))
    assert reason.startswith("ForbiddenJobError: function os.system")
    assert "RQPLUS_JOB_MODULES" in reason
    assert refusal(Job.create("tasks.demo.work", connection=fakeredis.FakeRedis()), ("tasks",)) is None


def test_unreadable_job_data_is_a_refusal_not_a_crash():
    job = Job.create("tasks.demo.work", connection=fakeredis.FakeRedis())
    job.data = b"not a pickle"
    assert refusal(job, ("tasks",)).startswith("DeserializationError: the job's data cannot be read")


@pytest.mark.parametrize("serializer, option", [(None, ()), (JSONSerializer, ("-S", "rq.serializers.JSONSerializer"))])
def test_forged_jobs_fail_clearly_and_run_nothing(redis, redis_server, processes, tmp_path, serializer, option):
    pwned, canary = tmp_path / "pwned", tmp_path / "canary"
    stock = RQQueue("work", connection=redis, serializer=serializer)  # anyone with Redis access can do this
    forged = stock.enqueue("os.system", f"touch {pwned}")
    never_imported = stock.enqueue("tests.import_canary.run")
    fine = stock.enqueue("tests.jobs.record", "allowed-job")
    worker = processes.rq_worker(redis_server.url, "work", extra=option, env={"CANARY_PATH": str(canary)})
    out = processes.finish(worker)
    assert worker.returncode == 0, out
    for job in (forged, never_imported):
        assert job.get_status(refresh=True) == "failed"
        assert "ForbiddenJobError" in job.latest_result().exc_string
    assert "os.system is not in an allowed module" in forged.latest_result().exc_string
    assert not pwned.exists() and not canary.exists()
    assert fine.get_status(refresh=True) == "finished" and ran(redis) == ["allowed-job"]
