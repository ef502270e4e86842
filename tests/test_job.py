"""rqplus/job.py: a job's function and callbacks are the objects the allow-list judged, however the
job class was given; its meta is loaded when first read, its data inflated no further than a load reads."""

from __future__ import annotations

import zlib

import fakeredis
import pytest
from rq import Callback
from rq.job import Job as RQJob

from rqplus import Queue, priority_of
from rqplus.allowlist import refusal
from rqplus.dashboard.payloads import DashboardJob
from rqplus.exceptions import ForbiddenJobError
from rqplus.job import Job, judged_job_class
from rqplus.serializers import SafePickleSerializer
from rqplus.unpickling import inflated, max_pickle_bytes
from tests import jobs, pickles


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


class CountingSerializer(SafePickleSerializer):
    """The worker's serializer, counting the meta pickles it loads."""

    metas = 0

    @classmethod
    def loads(cls, data: bytes):
        loaded = SafePickleSerializer.loads(data)
        cls.metas += isinstance(loaded, dict)
        return loaded


def test_meta_is_loaded_when_first_read_and_saved_back_as_fetched_until_then(redis):
    queue = Queue("q", connection=redis)
    job = queue.enqueue("tests.jobs.record", "x", meta={"user": 7}, priority=2)
    stored = redis.hget(job.key, "meta")
    CountingSerializer.metas = 0
    fetched = Job.fetch(job.id, connection=redis, serializer=CountingSerializer)
    fetched.save()                                             # RQ encodes meta again here
    assert CountingSerializer.metas == 0 and redis.hget(job.key, "meta") == stored
    assert fetched.meta == {"user": 7, "priority": 2} and priority_of(fetched) == 2
    assert CountingSerializer.metas == 1
    fetched.meta["user"] = 8
    fetched.save_meta()
    assert Job.fetch(job.id, connection=redis).meta["user"] == 8
    fetched.refresh()
    assert fetched.meta == {"user": 8, "priority": 2} and CountingSerializer.metas == 2


def test_a_meta_the_safe_unpickler_refuses_refuses_the_job_and_is_kept_as_stored(redis):
    queue = Queue("q", connection=redis)
    garbage, forged = queue.enqueue("tests.jobs.record", "x"), queue.enqueue("tests.jobs.record", "y")
    redis.hset(garbage.key, "meta", b"not a pickle")
    redis.hset(forged.key, "meta", pickles.MUTATIONS["BUILD on Counter"])
    unreadable = Job.fetch(garbage.id, connection=redis, serializer=SafePickleSerializer)
    assert unreadable.meta == {"unserialized": b"not a pickle"} and unreadable.meta_refusal() is None  # as RQ
    refused = Job.fetch(forged.id, connection=redis, serializer=SafePickleSerializer)
    assert refusal(refused).startswith("UnsafePickleError: the job's meta: the pickle applies BUILD to a class "
                                       "collections.Counter")
    refused.save()
    assert redis.hget(forged.key, "meta") == pickles.MUTATIONS["BUILD on Counter"]


def test_job_data_inflates_no_further_than_a_load_reads(redis, monkeypatch):
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
    redis.hset(job.key, "data", pickles.INFLATING_DATA)   # 64 MB of pickle in 64 KB
    fetched = Job.fetch(job.id, connection=redis, serializer=SafePickleSerializer)
    assert len(fetched.data) == max_pickle_bytes() + 1 == 1024 * 1024 + 1
    assert "over the 1048576 byte limit" in refusal(fetched)
    monkeypatch.setenv("RQPLUS_MAX_PAYLOAD_BYTES", "2000000")  # a worker reads what a producer may enqueue
    assert max_pickle_bytes() == 2_000_000
    monkeypatch.setenv("RQPLUS_MAX_PICKLE_BYTES", "3000")
    assert len(DashboardJob.fetch(job.id, connection=redis).data) == 3001
    compressed = zlib.compress(b"abc")
    assert [inflated(data) for data in (compressed + b"junk", compressed[:-3], b"abc")] == [b"abc", compressed[:-3],
                                                                                          b"abc"]
