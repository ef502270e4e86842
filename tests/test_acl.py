"""deploy/users.acl, measured: each rqplus component runs its real paths under its own ACL user
(conftest's ``acl_server``: a durable private redis-server loading the shipped file, placeholders
replaced by test passwords), and Redis' ``ACL LOG`` shows nothing denied but the CONFIG GET that
rqplus' durability check answers from INFO instead; and each user is refused what it does not need.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, NoPermissionError
from rq import Retry
from rq.job import Job

from rqplus import Queue, scripts
from rqplus import requeue as runs
from rqplus.dashboard import Credentials, create_app
from rqplus.embedded import RedisServer, RedisServerError
from tasks.emails import enqueue_email
from tasks.logging import log_event
from tasks.payments import enqueue_payment
from tests.conftest import (ACL_ADMIN, ACL_FILE, ROOT, AclRedisServer, Processes, acl_password, doc_examples, run_shell,
                            subprocess_env, wait_for)

ROLES = ("producer", "worker", "dashboard", "check")
DASHBOARD_USER = Credentials("ops", "dashboard sign-in password")


def produce(connection: Redis) -> dict[str, Job]:
    """What producers do: every enqueue entry point, the bundled task helpers, job status reads."""
    queue = Queue("default", connection=connection)
    jobs = {
        "urgent": queue.enqueue("tasks.demo.work", 0, "urgent", priority=0),
        "retried": queue.enqueue("tasks.demo.work", "not a number", "retried", retry=Retry(max=1)),
        "forbidden": queue.enqueue("os.getcwd"),  # not an allowed module: fails on the worker
        "scheduled": queue.enqueue_in(timedelta(seconds=1), "tasks.demo.work", 0, "later", priority=1),
        "durable": Queue("emails", connection=connection, durable=True).enqueue("tasks.demo.work", 0, "durable"),
        "drain": Queue("events", connection=connection).enqueue("tasks.logging.drain_events"),
        "payment": enqueue_payment("user_123", "49.99", connection=connection),
    }
    jobs["many"], = queue.enqueue_many([Queue.prepare_data("tasks.demo.work", (0, "many"), priority=2)])
    enqueue_email("ada@example.com", "Welcome", "Hello", connection=connection, queue="outbox", job_id="welcome-ada")
    log_event("User logged in", connection=connection, user_id="user_123")
    assert Job.fetch(jobs["urgent"].id, connection=connection).get_status() == "queued"
    return jobs


def run_workers(url: str, tmp_path: Path, producer: Redis) -> None:
    """What workers do: a multi-queue and a single-queue ``rq worker`` with the scheduler in burst mode,
    then two idle ones blocked on their queues until a job comes, stopped by SIGTERM."""
    env = subprocess_env(EVENT_LOG_PATH=str(tmp_path / "events.jsonl"), RQ_REDIS_URL=url, RQPLUS_RESCUE_INTERVAL="1")
    command = [sys.executable, "-m", "rq.cli", "worker", "-w", "rqplus.Worker", "--queue-class", "rqplus.Queue",
               "--with-scheduler"]
    for queues in (["payments", "emails", "events"], ["default"]):
        time.sleep(1.1)  # the scheduled job is due: the worker's scheduler moves it at start
        done = subprocess.run([*command, "--burst", *queues], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    idle = [subprocess.Popen([*command, *queues], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            for queues in (["default"], ["emails", "events"])]
    try:
        time.sleep(2)
        jobs = [Queue(name, connection=producer).enqueue("tasks.demo.work", 0, name) for name in ("default", "events")]
        wait_for(lambda: all(job.get_status(refresh=True) == "finished" for job in jobs), timeout=20)
    finally:
        for worker in idle:
            worker.terminate()
    assert [worker.wait(20) for worker in idle] == [0, 0]


def browse_dashboard(url: str, failed_job: str, other_job: str) -> None:
    """What the dashboard does: sign in, every page and JSON view, each action, sign out."""
    app = create_app(url, credentials=DASHBOARD_USER, secret_key="test")
    client = app.test_client()
    client.get("/login")
    form = {"username": DASHBOARD_USER.username, "password": DASHBOARD_USER.password,
            "_csrf_token": client.get_cookie("_csrf_token").value}
    assert client.post("/login", data=form).status_code == 302
    for page in ("/", "/failed", "/audit", "/metrics", "/rq/", "/rq/0/view/queues", "/rq/0/view/workers",
                 f"/rq/0/view/job/{failed_job}", "/rq/0/data/queues.json", "/rq/0/data/workers.json",
                 "/rq/0/data/jobs/default/failed/8/asc/1.json", "/rq/0/data/jobs/default/queued/8/asc/1.json",
                 f"/rq/0/data/job/{failed_job}.json"):
        answer = client.get(page, follow_redirects=True)
        assert answer.status_code == 200, (page, answer.status_code, answer.text[:300])
    headers = {"X-CSRFToken": client.get_cookie("_csrf_token").value, "Origin": "http://localhost"}
    for action in (f"/rq/job/{failed_job}/requeue", f"/rq/job/{other_job}/delete", "/rq/requeue/default",
                   "/rq/queue/default/compact", "/rq/queue/default/finished/empty"):
        answer = client.post(action, headers=headers)
        assert answer.status_code == 200, (action, answer.status_code, answer.text[:300])
    connection = app.extensions["rqplus.dashboard"].connection   # the bulk requeue's thread ends as done
    assert wait_for(lambda: all(run.status == "done" for run in runs.runs(connection)) and runs.runs(connection))
    assert client.get("/requeue").status_code == 200
    assert client.post("/logout", headers=headers).status_code == 302


def run_check(**env: str) -> str:
    """``rqplus check`` with ``env``, as an operator runs it; returns its output (exit 0: durable)."""
    done = subprocess.run([sys.executable, "-m", "rqplus.cli", "check"], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def signed_in_by_environment(server: AclRedisServer, role: str) -> dict[str, str]:
    """``$REDIS_URL`` without credentials, ``$REDIS_USERNAME`` / ``$REDIS_PASSWORD`` with those of ``role``."""
    return {"REDIS_URL": f"redis://127.0.0.1:{server.port}/0", "REDIS_USERNAME": f"rqplus-{role}",
            "REDIS_PASSWORD": acl_password(role)}


def granted(user: str) -> set[str]:
    """The commands deploy/users.acl grants ``user`` (its ``+command`` rules)."""
    line = next(line for line in ACL_FILE.read_text().splitlines() if line.startswith(f"user {user} "))
    return {rule[1:] for rule in line.split() if rule.startswith("+")}


def denials(admin: Redis) -> set[tuple[str, str, str]]:
    """What Redis refused so far: (user, reason, command or key or channel) from ACL LOG."""
    return {(entry["username"], entry["reason"], entry["object"]) for entry in admin.acl_log()}


def test_rqplus_dashboard_signs_in_to_redis_with_environment_credentials(acl_server: AclRedisServer,
                                                                        processes: Processes):
    env = {**signed_in_by_environment(acl_server, "dashboard"),
           "RQPLUS_DASHBOARD_USERNAME": DASHBOARD_USER.username, "RQPLUS_DASHBOARD_PASSWORD": DASHBOARD_USER.password}
    dashboard = processes.start([sys.executable, "-m", "rqplus.cli", "dashboard", "--port", "0"], **env)
    served = wait_for(lambda: re.search(r"(http://127\.0\.0\.1:\d+/) \(Redis (.*)\)", processes.output(dashboard)))
    assert served[2] == f"redis://rqplus-dashboard:***@127.0.0.1:{acl_server.port}/0"
    request = urllib.request.Request(served[1] + "metrics", headers={"Authorization": "Basic " + base64.b64encode(
        f"{DASHBOARD_USER.username}:{DASHBOARD_USER.password}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert "rqplus_redis_durable 1" in answer.read().decode()
    assert "p@ss" not in processes.output(dashboard)


def test_the_shipped_file_keeps_redis_down_until_its_passwords_are_set(tmp_path):
    with pytest.raises(RedisServerError, match="password hash must be exactly 64"):
        RedisServer(config={"aclfile": ACL_FILE}, data_dir=tmp_path).start()


def test_each_component_runs_under_its_own_user(acl_server: AclRedisServer, tmp_path):
    admin = acl_server.client()
    producer = Redis.from_url(acl_server.user_url("producer"))
    jobs = produce(producer)
    run_workers(acl_server.user_url("worker"), tmp_path, producer)
    states = {name: job.get_status(refresh=True) for name, job in jobs.items()}
    assert states == {**dict.fromkeys(jobs, "finished"), "retried": "failed", "forbidden": "failed"}
    assert admin.hlen("payments:user:user_123") == 1 and (tmp_path / "events.jsonl").read_text().count("\n") == 1
    browse_dashboard(acl_server.user_url("dashboard"), jobs["forbidden"].id, jobs["retried"].id)
    assert jobs["forbidden"].get_status(refresh=True) == "queued"  # requeued from the dashboard
    shown = run_check(**signed_in_by_environment(acl_server, "check"))
    assert shown.startswith(f"durable: yes - redis://rqplus-check:***@127.0.0.1:{acl_server.port}/0 ")
    assert "p@ss" not in shown and "password_required          True" in shown
    expected = {(f"rqplus-{role}", "command", "config|get") for role in ("producer", "worker", "dashboard")}
    assert denials(admin) <= expected  # a worker reads its address with CLIENT INFO, not the admin CLIENT LIST
    assert ("rqplus-producer", "command", "config|get") in denials(admin)  # the log is read, not empty by accident


@pytest.mark.parametrize("role, refused", [
    ("producer", [("FLUSHALL",), ("CONFIG", "GET", "*"), ("GET", "other:key"), ("DEL", "rqplus:dashboard:audit"),
                  ("EVAL", "return redis.call('SET', KEYS[1], 'x')", 1, "other:key"), ("SUBSCRIBE", "rq:pubsub:w")]),
    ("worker", [("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "appendonly", "no"), ("KEYS", "*"),
                ("SET", "rqplus:dashboard:session:forged", "x"), ("EVAL", "return 1", 1, "other:key"), ("ACL", "LIST")]),
    ("dashboard", [("FLUSHALL",), ("CONFIG", "GET", "*"), ("SET", "other:key", "x"), ("PUBLISH", "rq:pubsub:w", "x"),
                   ("SHUTDOWN",)]),
    ("check", [("GET", "rq:queues"), ("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("CLIENT", "LIST")]),
])
def test_each_user_is_refused_what_it_does_not_need(acl_server: AclRedisServer, role, refused):
    client = Redis.from_url(acl_server.user_url(role))
    for command in refused:
        with pytest.raises(NoPermissionError):
            client.execute_command(*command)
    assert client.ping()


def test_anonymous_clients_are_refused(acl_server: AclRedisServer):
    with pytest.raises(AuthenticationError, match="Authentication required"):
        Redis(port=acl_server.port, retry=None).ping()


@pytest.mark.parametrize("role, scripts", [
    ("worker", [path.read_text() for path in (ROOT / "rqplus" / "scripts.py", *(ROOT / "tasks").glob("*.py"))]),
    ("producer", [scripts.ENQUEUE, scripts.PRIORITY_INSERT]),
    ("dashboard", [scripts.PRIORITY_INSERT]),  # Queue.requeue_failed
])
def test_every_command_of_the_lua_scripts_a_user_runs_is_granted(role, scripts):
    """Redis checks each command a script runs: branches the end-to-end run did not take must be granted too."""
    called = {name.lower() for text in scripts for name in re.findall(r"redis\.p?call\(['\"](\w+)", text)}
    assert called and called <= granted(f"rqplus-{role}")


SECURITY_DOC = ROOT / "docs" / "security.md"


def test_the_documented_install_and_client_examples_work(acl_server: AclRedisServer, tmp_path):
    install, check, worker, settings = doc_examples(SECURITY_DOC, "Redis access control")
    acl = tmp_path / "users.acl"
    run_shell(install, {"/etc/redis/users.acl": str(acl)}, stdin="".join(f"{role}-pw\n" for role in ROLES))
    assert "CHANGE-ME" not in acl.read_text() and "-pw" not in acl.read_text()  # hashes only
    acl.write_text(f"{acl.read_text()}user {ACL_ADMIN[0]} on >{ACL_ADMIN[1]} ~* &* +@all\n")
    with AclRedisServer(config={"aclfile": acl}, data_dir=tmp_path / "redis") as installed:
        for role in ROLES:
            assert Redis(port=installed.port, username=f"rqplus-{role}", password=f"{role}-pw").ping()

    here = {"redis.internal:6379": f"127.0.0.1:{acl_server.port}"}
    assert "password_required" in run_shell(check, here, CHECK_PASSWORD=acl_password("check"))
    producer = Redis.from_url(acl_server.user_url("producer"))
    jobs = [Queue("default", connection=producer).enqueue("tasks.demo.work", 0, tag) for tag in ("url", "settings")]
    run_shell(worker.strip() + " --burst", here, WORKER_PASSWORD=quote(acl_password("worker"), safe=""))
    assert jobs[0].get_status(refresh=True) == "finished"
    (tmp_path / "rq_settings.py").write_text(settings)
    command = settings.splitlines()[0].split("`")[1]
    run_shell(command + " --burst", {}, cwd=tmp_path, **signed_in_by_environment(acl_server, "worker"))
    assert jobs[1].get_status(refresh=True) == "finished"
