"""rqplus/job.py: a job's function and callbacks are the objects the allow-list judged, however the
job class was given."""

from __future__ import annotations

import fakeredis
import pytest
from rq import Callback
from rq.job import Job as RQJob

from rqplus.exceptions import ForbiddenJobError
from rqplus.job import Job, judged_job_class
from tests import jobs


def fetch(job_class: type[RQJob], func: str, **options) -> RQJob:
    """A job created with stock RQ, read back through ``job_class`` as a worker would."""
    connection = fakeredis.FakeRedis()
    created = RQJob.create(func, args=("x",), connection=connection, **options)
    created.save()
    return job_class.fetch(created.id, connection=connection)


def test_func_is_the_allowed_function():
    assert fetch(Job, "tests.jobs.record").func is jobs.record


@pytest.mark.parametrize("func", ["tasks.settings.os.system", "os.system", "tests.jobs.Recorder.shell"])
def test_func_of_a_forged_name_raises_instead_of_resolving(func):
    job = fetch(Job, func)
    with pytest.raises(ForbiddenJobError):
        job.func
    with pytest.raises(ForbiddenJobError):
        job.perform()  # what RQ's work-horse calls


def test_callbacks_resolve_through_the_allow_list_at_every_call():
    job = fetch(Job, "tests.jobs.record", on_success=Callback("tests.jobs.record"),
                on_failure=Callback("os.system"), on_stopped=Callback("tasks.settings.os.system"))
    assert job.success_callback is jobs.record
    with pytest.raises(ForbiddenJobError):
        job.failure_callback
    with pytest.raises(ForbiddenJobError):
        job.stopped_callback
    assert fetch(Job, "tests.jobs.record").success_callback is None


class CustomJob(RQJob):
    """A user's job class, given to ``rq worker -j``."""

    marker = "custom"


def test_a_custom_job_class_gets_the_judged_resolution_mixed_in():
    judged = judged_job_class(CustomJob)
    assert issubclass(judged, CustomJob) and issubclass(judged, Job) and judged.marker == "custom"
    assert judged_job_class(CustomJob) is judged and judged_job_class(Job) is Job
    with pytest.raises(ForbiddenJobError):
        fetch(judged, "tasks.demo.os.system").func


def test_rq_worker_with_a_job_class_still_judges(redis, redis_server, processes, tmp_path):
    from rq import Queue

    marker = tmp_path / "pwned"
    forged = Queue("work", connection=redis).enqueue("tests.jobs.os.system", f"touch {marker}")
    worker = processes.rq_worker(redis_server.url, "work", extra=("-j", "tests.test_job.CustomJob"))
    out = processes.finish(worker)
    assert worker.returncode == 0, out
    assert forged.get_status(refresh=True) == "failed" and not marker.exists()
    assert "steps through module os" in forged.latest_result().exc_string


def test_a_judged_job_equals_the_job_it_was_loaded_from():
    judged, plain = fetch(judged_job_class(CustomJob), "tests.jobs.record"), fetch(CustomJob, "tests.jobs.record")
    other = fetch(CustomJob, "tests.jobs.record")
    plain._id = judged.id
    assert judged == plain and plain == judged and judged != other and judged != judged.id
    assert len({judged, plain}) == 1
