"""rqplus.functions and rqplus/lua/: the function library (its name, loading, upgrades, Redis
without functions), RQ's scripts run through it, pipelines, and the bound on how long one
``enqueue_many`` call holds Redis. Real redis-servers (conftest); the ACL side is in test_acl.py."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from redis import Redis
from rq.scripts import acquire_or_refresh_lock, release_lock

from rqplus import Queue, scripts
from rqplus import functions as fn
from rqplus.defaults import MAX_PRIORITY, MIN_PRIORITY
from rqplus.exceptions import LibraryError
from rqplus.functions import Function, Library, rqplus_library, with_functions
from rqplus.embedded import RedisServer
from rqplus.lua import FUNCTIONS, HELPERS, constants
from rqplus.queue import ENQUEUE_MANY_CHUNK
from tests.conftest import ROOT, subprocess_env

JOB = "tests.jobs.record"


def calls(redis: Redis, *commands: str) -> int:
    stats = redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{command}", {}).get("calls", 0) for command in commands)


def test_every_lua_file_is_a_listed_function_or_the_helpers():
    files = {path.stem for path in (ROOT / "rqplus" / "lua").glob("*.lua")}
    assert files == {HELPERS, *FUNCTIONS}


def test_python_reads_the_constants_from_the_lua_and_splices_none_into_it():
    assert (scripts.WINDOW, scripts.WAKE_TOKENS, scripts.MAX_BATCH, MIN_PRIORITY, MAX_PRIORITY) == tuple(
        constants()[name] for name in ("WINDOW", "WAKE_TOKENS", "MAX_BATCH", "MIN_PRIORITY", "MAX_PRIORITY"))
    python = "".join(path.read_text() for path in (ROOT / "rqplus").glob("*.py"))
    assert "redis.call(" not in python, "rqplus's Lua lives in rqplus/lua/ only"


def test_the_library_name_follows_its_content_so_versions_coexist_and_prune(redis):
    old = Library("rqplus", {"one": Function("return 1")})
    new = Library("rqplus", {"one": Function("return 2")})
    assert old.name != new.name and old.name == Library("rqplus", {"one": Function("return 1")}).name
    assert old.install(redis) and new.install(redis) and not new.install(redis)
    assert (old.call(redis, "one"), new.call(redis, "one")) == (1, 2), "both versions serve their callers"
    assert old.name in new.others(redis)
    lines = fn.install(redis, [new], prune=True)
    assert f"{old.name}: deleted (--prune)" in lines and old.installed(redis) is False and new.installed(redis)


def test_a_missing_library_is_loaded_by_a_user_allowed_to_and_called_again(redis):
    redis.function_flush()
    queue = Queue("q", connection=redis)
    job = queue.enqueue(JOB, "x")
    assert queue.get_job_ids() == [job.id] and rqplus_library().installed(redis)


def test_a_user_not_allowed_to_load_gets_the_fix_named_and_nothing_written(redis_factory, tmp_path):
    acl = tmp_path / "users.acl"
    acl.write_text("user default on nopass ~* &* +@all\n"
                   "user app on >pw ~* &* +@all -function|load -eval -evalsha -script\n")
    server = redis_factory(aclfile=acl)
    app = Redis(port=server.port, username="app", password="pw")
    with pytest.raises(LibraryError, match=r"user app may not load it \(FUNCTION LOAD\): run `rqplus check --install`"):
        Queue("q", connection=app).enqueue(JOB, "x")
    assert server.client().dbsize() == 0


def test_a_pipeline_checks_the_library_before_queueing_a_call(redis, monkeypatch):
    """Inside MULTI/EXEC a missing function fails at EXEC, after the job hash was written: the
    library is checked (and loaded) before the call is queued, within PIPELINE_CHECK_INTERVAL."""
    monkeypatch.setattr(fn, "PIPELINE_CHECK_INTERVAL", 0.0)
    queue = Queue("q", connection=redis)
    queue.enqueue(JOB, "loaded once")
    redis.function_flush()  # an admin's FUNCTION FLUSH, say
    with redis.pipeline() as pipe:
        job = queue.enqueue_job(queue.create_job(JOB, args=("in a pipeline",)), pipeline=pipe)
        pipe.execute()
    assert job.id in queue.get_job_ids()


def test_enqueue_many_into_a_callers_pipeline_queues_whole_jobs(redis):
    queue = Queue("q", connection=redis)
    with redis.pipeline() as pipe:
        jobs = queue.enqueue_many([Queue.prepare_data(JOB, (n,), priority=n % 3) for n in range(ENQUEUE_MANY_CHUNK + 1)],
                                  pipeline=pipe)
        assert redis.exists(jobs[0].key) == 0, "nothing written before the caller's EXEC"
        pipe.execute()
    assert sorted(queue.get_job_ids()) == sorted(job.id for job in jobs)


def test_rqs_own_scripts_run_as_functions(redis):
    """Queue.empty's script, the scheduler's locks (and unique enqueue): FCALL, never EVALSHA."""
    queue = Queue("q", connection=redis)
    queue.enqueue(JOB, "x")
    redis.config_resetstat()
    assert queue.empty() == 1
    assert acquire_or_refresh_lock(redis, "rq:scheduler-lock:q", "me", 10) == "acquired"
    assert release_lock(redis, "rq:scheduler-lock:q", "me")
    queue.enqueue(JOB, "unique", job_id="unique-1", unique=True)
    # empty: rqplus's backlog merge, RQ's script; the lock's two; unique: RQ's script, rqplus's reposition
    assert calls(redis, "evalsha", "eval") == 0 and calls(redis, "fcall") == 6
    assert queue.get_job_ids() == ["unique-1"]


def test_connections_rq_makes_from_one_keep_running_its_scripts_as_functions(redis):
    """RQ's scheduler and worker pool rebuild a client as ``connection.__class__(connection_pool=...)``."""
    plain = Redis(connection_pool=redis.connection_pool)
    assert with_functions(plain) is plain and type(plain) is fn.FunctionsRedis
    rebuilt = plain.__class__(connection_pool=redis.connection_pool)
    redis.config_resetstat()
    acquire_or_refresh_lock(rebuilt, "rq:scheduler-lock:x", "me", 10)
    assert calls(redis, "evalsha") == 0 and calls(redis, "fcall") == 1


def test_without_functions_the_same_lua_runs_by_evalsha(tmp_path):
    """A Redis without FCALL (as Redis < 7.0; here renamed away): rqplus runs its Lua as scripts."""
    conf = tmp_path / "redis.conf"
    conf.write_text('rename-command FCALL ""\nrename-command FCALL_RO ""\n')
    with RedisServer(conf_file=conf, data_dir=tmp_path / "redis") as server:
        client = server.client()
        queue = Queue("q", connection=client)
        jobs = [queue.enqueue(JOB, str(n), priority=p) for n, p in enumerate((5, 0, 9))]
        assert queue.get_job_ids() == [jobs[1].id, jobs[0].id, jobs[2].id]
        assert queue.empty() == 3
        assert calls(client, "evalsha") >= 4 and rqplus_library().installed(client) is None


def test_one_enqueue_many_call_holds_redis_about_50_ms_at_most(redis):
    """The bound the task states: Redis' own slow log (every command over 25 ms, with its duration)
    while 20,000 jobs are enqueued; stock RQ's one MULTI/EXEC takes about 130 ms for as many."""
    queue = Queue("q", connection=redis)
    queue.enqueue(JOB, "warm")
    redis.config_set("slowlog-log-slower-than", 25_000)
    redis.slowlog_reset()
    try:
        queue.enqueue_many([Queue.prepare_data(JOB, (n,), priority=n % 10) for n in range(20_000)])
        slow = redis.slowlog_get(128)
    finally:
        redis.config_set("slowlog-log-slower-than", 10_000)
    assert queue.count == 20_001
    assert max((entry["duration"] for entry in slow), default=0) < 50_000, slow


def test_rqplus_check_install_loads_and_says_so(redis_server):
    command = [sys.executable, "-m", "rqplus.cli", "check", "--url", redis_server.url, "--install", "--library",
               "tasks.payments"]
    Redis(port=redis_server.port).function_flush()
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=30)
    assert f"functions: {rqplus_library().name}: loaded (" in done.stdout, done.stdout + done.stderr
    assert re.search(r"functions: tasks_payments_[0-9a-f]{12}: loaded \(1 function\)", done.stdout)
    again = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=30)
    assert f"functions: {rqplus_library().name}: already loaded" in again.stdout
    refused = subprocess.run([*command[:-2], "--library", "os"], env=subprocess_env(), capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode == 2 and "'os' names no function library" in refused.stderr
