"""Every rqplus override takes exactly the parameters of the RQ method it overrides (on the installed
rq release), so any caller written for ``rq.Queue``/``rq.Worker`` works, RQ's own CLI included.

Overrides are found by walking the classes rqplus defines in each class's MRO: a method RQ adds a
parameter to fails here until the override passes it on. rqplus may only add keyword-only extras
(``priority``, ``durable``, ``max_rescues``, ``rescue_interval``).
"""

from __future__ import annotations

import inspect
import subprocess
import sys
from types import FunctionType

import pytest
from redis import Redis
from rq import Queue as RQQueue
from rq import Worker as RQWorker
from rq.job import Job as RQJob
from rq.scheduler import RQScheduler

import rqplus
from rqplus.compat import rq_signature
from rqplus.job import Job
from rqplus.scheduler import PriorityScheduler
from tests.conftest import Processes, subprocess_env, wait_for
from tests.jobs import ran

CLASSES = [(rqplus.Queue, RQQueue), (rqplus.Worker, RQWorker), (PriorityScheduler, RQScheduler), (Job, RQJob)]


def overrides() -> list[tuple[type, type, str]]:
    """``(rqplus class, rq class, name)`` for every method an rqplus class (or a mixin of it) defines
    over one of RQ's."""
    found = []
    for plus, base in CLASSES:
        own = [cls for cls in plus.__mro__ if cls not in base.__mro__]
        for name in sorted({name for cls in own for name, value in vars(cls).items()
                            if isinstance(value, (FunctionType, classmethod, staticmethod))}):
            if inspect.getattr_static(base, name, None) is not None:
                found.append((plus, base, name))
    return found


@pytest.mark.parametrize("plus, base, name", overrides(),
                         ids=[f"{plus.__name__}.{name}" for plus, _, name in overrides()])
def test_override_takes_rq_parameters(plus, base, name):
    ours, theirs = inspect.signature(getattr(plus, name)), inspect.signature(getattr(base, name))
    extras = {p.name for p in ours.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name not in theirs.parameters}
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values() if p.name not in extras] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ], f"{plus.__name__}.{name}{ours} does not take {base.__module__}.{base.__name__}.{name}{theirs}"


def test_the_walk_finds_the_overrides():
    names = {f"{plus.__name__}.{name}" for plus, _, name in overrides()}
    assert {"Queue.__init__", "Queue.enqueue_call", "Queue.prepare_data", "Queue.create_job", "Queue.dequeue_any",
            "Worker.__init__", "Worker.perform_job", "Worker.handle_job_failure", "Worker.work"} <= names


def test_rq_signature_binds_like_rq():
    """A positional argument reaches the override by name; RQ's own TypeErrors stay."""
    def rq_method(self, func, args=None, meta=None, **kwargs): ...

    @rq_signature(rq_method)
    def override(self, *, priority=None, **arguments):
        return priority, arguments

    assert override("q", "f", (1,), {"a": 1}, timeout=3, priority=0) == (
        0, {"func": "f", "args": (1,), "meta": {"a": 1}, "timeout": 3})
    assert str(inspect.signature(override)) == "(self, func, args=None, meta=None, *, priority=None, **kwargs)"
    with pytest.raises(TypeError, match="multiple values for argument 'meta'"):
        override("q", "f", (), {}, meta={})
    with pytest.raises(TypeError, match="too many positional arguments"):
        override("q", "f", (), {}, "extra")


def positional_call(method, **given):
    """RQ's parameters of ``method`` in order, as positional values (defaults unless ``given``)."""
    params = [p for p in inspect.signature(method).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD
              and p.name != "self"]
    return [given.get(p.name, p.default) for p in params]


def test_enqueue_call_and_prepare_data_take_rq_options_positionally(redis):
    """As RQ's CLI calls them: every option positional, ``meta`` included, priority by keyword."""
    queue = rqplus.Queue("default", connection=redis)
    options = {"func": "tests.jobs.record", "args": ("a",), "meta": {"user": 7}, "description": "d", "job_id": "j1"}
    job = queue.enqueue_call(*positional_call(RQQueue.enqueue_call, **options), priority=1)
    assert (job.id, job.description, job.meta, job.args) == ("j1", "d", {"user": 7, "priority": 1}, ("a",))
    assert rqplus.priority_of(rqplus.Queue("default", connection=redis).fetch_job("j1")) == 1
    data = rqplus.Queue.prepare_data(*positional_call(RQQueue.prepare_data, **{**options, "job_id": "j2"}),
                                     priority=2)
    assert data.meta == {"user": 7, "priority": 2}
    created = queue.create_job(*positional_call(RQQueue.create_job, **{**options, "job_id": "j3"}))
    assert created.meta == {"user": 7, "priority": 5}


def test_rq_cli_enqueue_with_rqplus_queue(redis, processes: Processes):
    """``rq enqueue --queue-class rqplus.Queue`` (RQ's CLI, which passes enqueue_call's options
    positionally), then an rqplus worker runs the job."""
    url = f"redis://127.0.0.1:{redis.connection_pool.connection_kwargs['port']}/0"
    enqueue = subprocess.run([sys.executable, "-m", "rq.cli", "enqueue", "--url", url, "--queue-class", "rqplus.Queue",
                              "--queue", "cli", "--job-id", "from-cli", "tests.jobs.record", "from-cli"],
                             env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert enqueue.returncode == 0, enqueue.stdout + enqueue.stderr
    job = rqplus.Queue("cli", connection=redis).fetch_job("from-cli")
    assert job is not None and rqplus.priority_of(job) == 5
    worker = processes.rq_worker(url, "cli")
    output = processes.finish(worker)
    assert worker.returncode == 0, output
    wait_for(lambda: ran(redis) == ["from-cli"])
    assert job.get_status(refresh=True) == "finished"


def test_worker_takes_rq_arguments_positionally(redis):
    """``rqplus.Worker(queues, name, default_result_ttl, connection, ...)`` as RQ's positional order."""
    worker = rqplus.Worker(["w"], "positional", 42, redis, max_rescues=1)
    assert (worker.name, worker.default_result_ttl, worker.connection, worker.max_rescues) == (
        "positional", 42, redis, 1)
    assert isinstance(worker.queues[0], rqplus.Queue) and isinstance(redis, Redis)
