"""deploy/users.acl, measured: each rqplus component runs its real paths under its own ACL user
(conftest's ``acl_server``: a durable private redis-server loading the shipped file, placeholders
replaced by test passwords), and Redis' ``ACL LOG`` shows nothing denied but the CONFIG GET that
rqplus' durability check answers from INFO instead; each user is refused what it does not need; no
role can run Lua of its own or freeze Redis, and the operator stops a runaway function.
"""

from __future__ import annotations

import base64
import importlib
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from rq import Retry
from rq.job import Job

from rqplus import Queue
from rqplus import requeue as runs
from rqplus.compat import RQ_SCRIPT_MODULES
from rqplus.dashboard import Credentials, create_app
from rqplus.embedded import RedisServer, RedisServerError
from rqplus.faults import BusyScriptError
from rqplus.functions import library_named, queue_empty_scripts, rqplus_library
from rqplus.lua import FUNCTIONS, HELPERS, source
from tasks.emails import enqueue_email
from tasks.logging import log_event
from tasks.payments import enqueue_payment
from tests.conftest import (ACL_ADMIN, ACL_FILE, ROOT, AclRedisServer, Processes, acl_password, deploy_setting,
                            doc_examples, run_shell, subprocess_env, wait_for)

ROLES = ("producer", "worker", "dashboard", "check", "operator", "installer")
#: The demo tasks' function libraries, as `rqplus check --install` is told to load them.
LIBRARIES = ("tasks.payments", "tasks.gateways", "tasks.logging")
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


def run_check(*options: str, **env: str) -> str:
    """``rqplus check`` with ``options`` and ``env``, as an operator runs it; returns its output (exit 0: durable)."""
    done = subprocess.run([sys.executable, "-m", "rqplus.cli", "check", *options], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def install_functions(server: AclRedisServer) -> str:
    """What the admin step does: ``rqplus check --install`` as ``rqplus-installer``, rqplus's library
    and the demo tasks'; returns its output."""
    options = [option for name in LIBRARIES for option in ("--library", name)]
    shown = run_check("--install", *options, **signed_in_by_environment(server, "installer"))
    assert f"functions: {rqplus_library().name}: loaded" in shown
    return shown


def signed_in_by_environment(server: AclRedisServer, role: str) -> dict[str, str]:
    """``$REDIS_URL`` without credentials, ``$REDIS_USERNAME`` / ``$REDIS_PASSWORD`` with those of ``role``."""
    return {"REDIS_URL": f"redis://127.0.0.1:{server.port}/0", "REDIS_USERNAME": f"rqplus-{role}",
            "REDIS_PASSWORD": acl_password(role)}


def granted(user: str) -> set[str]:
    """The commands deploy/users.acl grants ``user`` (its ``+command`` rules)."""
    line = next(line for line in ACL_FILE.read_text().splitlines() if line.startswith(f"user {user} "))
    return {rule[1:] for rule in line.split() if rule.startswith("+")}


def ran(admin: Redis, *commands: str) -> int:
    """How many of ``commands`` Redis has run so far (INFO commandstats; refused ones not counted)."""
    stats = admin.info("commandstats")
    return sum(stats.get(f"cmdstat_{command}", {}).get("calls", 0) for command in commands)


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
    install_functions(acl_server)
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
    assert ran(admin, "eval", "evalsha", "script|load") == 0
    assert ("rqplus-producer", "command", "config|get") in denials(admin)  # the log is read, not empty by accident


@pytest.mark.parametrize("role, refused", [
    ("producer", [("FLUSHALL",), ("CONFIG", "GET", "*"), ("GET", "other:key"), ("DEL", "rqplus:dashboard:audit"),
                  ("EVAL", "return redis.call('SET', KEYS[1], 'x')", 1, "other:key"), ("SUBSCRIBE", "rq:pubsub:w"),
                  ("FCALL", "any", 1, "other:key"), ("SCRIPT", "KILL"), ("FUNCTION", "KILL")]),
    ("worker", [("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "appendonly", "no"), ("KEYS", "*"),
                ("SET", "rqplus:dashboard:session:forged", "x"), ("EVAL", "return 1", 1, "other:key"), ("ACL", "LIST"),
                ("EVALSHA", "0" * 40, 0), ("SCRIPT", "FLUSH"), ("FUNCTION", "FLUSH")]),
    ("dashboard", [("FLUSHALL",), ("CONFIG", "GET", "*"), ("SET", "other:key", "x"), ("PUBLISH", "rq:pubsub:w", "x"),
                   ("SHUTDOWN",), ("EVAL", "return 1", 0), ("FUNCTION", "DELETE", "rqplus")]),
    ("check", [("GET", "rq:queues"), ("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("CLIENT", "LIST"),
               ("FCALL_RO", "any", 0)]),
    ("operator", [("GET", "rq:queues"), ("EVAL", "return 1", 0), ("FUNCTION", "LOAD", "#!lua name=x\n"),
                  ("CONFIG", "SET", "busy-reply-threshold", "60000"), ("FUNCTION", "FLUSH")]),
    ("installer", [("GET", "rq:queues"), ("FCALL", "any", 0), ("EVAL", "return 1", 0), ("FUNCTION", "FLUSH"),
                   ("CONFIG", "SET", "appendonly", "no")]),
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


def rq_script(name: str) -> list[str]:
    """RQ's script kept as ``name`` (e.g. ``RELEASE_LOCK_SCRIPT``); none on an rq without it (rate
    limits are rq 3.x's)."""
    found = [vars(importlib.import_module(module)).get(name) for module in RQ_SCRIPT_MODULES]
    return [script for script in found if script][:1]


#: The Lua each role runs: rqplus's functions (by name), RQ's scripts (by their constants' names:
#: unique enqueue and schedule, rq 3.x rate limits, the scheduler's locks; and Queue.empty's), the
#: demo tasks' libraries.
LUA = {
    "producer": (["enqueue", "priority_insert"], ["UNIQUE_ENQUEUE_SCRIPT", "UNIQUE_SCHEDULE_SCRIPT",
                                                  "ACQUIRE_AND_ENQUEUE_SCRIPT"], False, ()),
    "worker": (list(FUNCTIONS), ["ACQUIRE_OR_REFRESH_LOCK_SCRIPT", "RELEASE_LOCK_SCRIPT", "ACQUIRE_AND_ENQUEUE_SCRIPT",
                                 "RELEASE_AND_ENQUEUE_SCRIPT", "RELEASE_STALE_AND_ENQUEUE_SCRIPT",
                                 "CLEANUP_REGISTRY_SCRIPT"], False, LIBRARIES),
    "dashboard": (["priority_insert", "requeue_failed", "merge_backlog"], ["RELEASE_STALE_AND_ENQUEUE_SCRIPT"], True,
                  ()),
}


@pytest.mark.parametrize("role", LUA)
def test_every_command_of_the_lua_a_user_runs_is_granted(role):
    """Redis checks each command a function runs: branches the end-to-end run did not take must be
    granted too, and so must the commands rqplus replays for RQ (``REPLAYED`` in helpers.lua)."""
    functions, rq_names, empties, libraries = LUA[role]
    texts = [source(HELPERS), *map(source, functions), *(script for name in rq_names for script in rq_script(name)),
             *(queue_empty_scripts() if empties else []),
             *(function.body for name in libraries for function in library_named(name).functions.values())]
    called = {name.lower() for text in texts for name in re.findall(r"redis\.p?call\(['\"](\w+)", text)}
    replayed = re.search(r"local REPLAYED = \{(.*?)\}", source(HELPERS))[1]
    if {"enqueue", "requeue_failed"} & set(functions):
        called |= {name.lower() for name in re.findall(r"(\w+) = true", replayed)}
    assert called and called <= granted(f"rqplus-{role}"), called - granted(f"rqplus-{role}")


SECURITY_DOC = ROOT / "docs" / "security.md"


def as_pattern(shown: str) -> str:
    """A line of documented output as a regex: ``<hash>`` stands for a library's hash, and a count of
    functions may differ (rq 2.12 has fewer scripts)."""
    pattern = re.escape(shown).replace("<hash>", "[0-9a-f]{12}")
    return re.sub(r"\\\(\d+", lambda _: r"\(\d+", pattern)


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
    load, shown = doc_examples(SECURITY_DOC, "Function library")[:2]
    loaded = run_shell(load, here, INSTALLER_PASSWORD=acl_password("installer"))
    for line in shown.replace("redis.internal:6379", here["redis.internal:6379"]).splitlines():
        assert re.search(as_pattern(line), loaded), (line, loaded)
    producer = Redis.from_url(acl_server.user_url("producer"))
    jobs = [Queue("default", connection=producer).enqueue("tasks.demo.work", 0, tag) for tag in ("url", "settings")]
    run_shell(worker.strip() + " --burst", here, WORKER_PASSWORD=quote(acl_password("worker"), safe=""))
    assert jobs[0].get_status(refresh=True) == "finished"
    (tmp_path / "rq_settings.py").write_text(settings)
    command = settings.splitlines()[0].split("`")[1]
    run_shell(command + " --burst", {}, cwd=tmp_path, **signed_in_by_environment(acl_server, "worker"))
    assert jobs[1].get_status(refresh=True) == "finished"


def test_the_documented_access_table_is_the_acl_files():
    """docs/security.md's table of users is made from deploy/users.acl (scripts/acl_table.py --write)."""
    spec = importlib.util.spec_from_file_location("acl_table", ROOT / "scripts" / "acl_table.py")
    acl_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(acl_table)
    assert acl_table.documented(SECURITY_DOC.read_text()) == acl_table.table(ACL_FILE.read_text()), \
        "docs/security.md's table differs from deploy/users.acl: run python scripts/acl_table.py --write"


# --- Lua: no role runs its own, none freezes Redis ------------------------------------------------

#: Lua a role might send: an endless loop, one that writes (unkillable once it has), a library.
HOSTILE = [
    ("EVAL", "while true do end", 0),
    ("EVAL", "while true do redis.call('SET', KEYS[1], 'x') end", 1, "rq:hostile"),
    ("SCRIPT", "LOAD", "while true do end"),
    ("FUNCTION", "LOAD", "#!lua name=hostile\nredis.register_function('hostile', function() while true do end end)"),
]
BIG_SCRIPT = 200 * 1024 * 1024


def send_big_script(server: AclRedisServer, role: str) -> bytes:
    """``SCRIPT LOAD`` of a 200 MB body, streamed as rqplus-<role> on a raw socket (no 200 MB in
    memory); returns Redis' first reply line after it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        password = acl_password(role).encode()
        sock.sendall(b"*3\r\n$4\r\nAUTH\r\n$%d\r\nrqplus-%s\r\n$%d\r\n%s\r\n" % (
            len(f"rqplus-{role}"), role.encode(), len(password), password))
        assert sock.recv(100) == b"+OK\r\n"
        sock.sendall(b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n$%d\r\n" % BIG_SCRIPT)
        chunk = b"-- " + b"x" * (1024 * 1024 - 4) + b"\n"
        for _ in range(BIG_SCRIPT // len(chunk)):
            sock.sendall(chunk)
        sock.sendall(b"-" * (BIG_SCRIPT % len(chunk)) + b"\r\n")
        return sock.recv(200).split(b"\r\n")[0]


class PingLoop(threading.Thread):
    """PINGs Redis from its own connection until stopped: the longest round trip, and every error
    (a BUSY reply, say)."""

    def __init__(self, client: Redis) -> None:
        super().__init__(daemon=True)
        self.client, self.longest, self.errors, self.stopped = client, 0.0, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                self.client.ping()
            except Exception as error:  # noqa: BLE001 -- every kind is a finding
                self.errors.append(error)
            self.longest = max(self.longest, time.monotonic() - started)
            time.sleep(0.01)

    def stop(self) -> PingLoop:
        self.stopped.set()
        self.join(10)
        return self


def test_no_role_runs_lua_of_its_own_and_workers_serve_meanwhile(acl_server: AclRedisServer, processes: Processes):
    install_functions(acl_server)
    admin = acl_server.client()
    worker = processes.rq_worker(acl_server.user_url("worker"), "default", burst=False)
    queue = Queue("default", connection=Redis.from_url(acl_server.user_url("producer")))
    pings = PingLoop(Redis.from_url(acl_server.user_url("dashboard")))
    pings.start()
    for role in ("producer", "worker", "dashboard"):
        client = Redis.from_url(acl_server.user_url(role))
        for command in HOSTILE:
            with pytest.raises(NoPermissionError):
                client.execute_command(*command)
        assert send_big_script(acl_server, role).startswith(b"-NOPERM")
        job = queue.enqueue("tasks.demo.work", 0, role)
        assert wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=30), processes.output(worker)
    pings.stop()
    assert pings.errors == [] and pings.longest < 1.0, (pings.errors, pings.longest)
    assert admin.get("rq:hostile") is None and not admin.function_list(library="hostile")
    assert ran(admin, "eval", "script|load") == 0
    assert ran(admin, "function|load") == 1 + len(LIBRARIES), "rqplus check --install's loads only"


def test_a_function_refuses_more_than_max_batch_and_foreign_writes(acl_server: AclRedisServer):
    """What a producer may call is bounded: at most MAX_BATCH jobs a call (refused, nothing written),
    and only a job's own writes replayed (a forged one stops the call before it runs)."""
    from rqplus.scripts import MAX_BATCH, Enqueued, enqueue, priority_insert, queue_keys

    install_functions(acl_server)
    admin, producer = acl_server.client(), Redis.from_url(acl_server.user_url("producer"))
    keys = queue_keys("q")
    words = [word for n in range(MAX_BATCH + 1) for word in (f"j{n}", 5, "back", "")]
    with pytest.raises(ResponseError, match="more than MAX_BATCH"):  # the wrapper splits; a forged call:
        producer.execute_command("FCALL", rqplus_library().function_name("priority_insert"), 4, *keys[:4],
                                 keys.backlog, "rq:job:", 5, *words)
    assert priority_insert(producer, keys, "rq:job:", 5, [(f"j{n}", 5, False, False) for n in range(MAX_BATCH + 1)]) \
        == MAX_BATCH + 1
    writes = [4, "HSET", "rq:job:a", "status", "queued", 2, "DEL", "rq:queue:other"]  # RQ's, then a forged one
    forged = Enqueued("rq:job:a", "a", 5, False, "now", writes)
    admin.rpush("rq:queue:other", "x")
    with pytest.raises(ResponseError, match="write DEL rq:queue:other is not one of job a's own writes"):
        enqueue(producer, keys, "rq:queues", "rq:job:", 5, [forged])
    assert admin.llen("rq:queue:other") == 1, "the forged write did not run"


def test_the_operator_stops_a_runaway_read_only_function_within_the_threshold(acl_server: AclRedisServer):
    """A read-only function that never ends (loaded here by the harness' admin: no rqplus role may
    load one): after busy-reply-threshold other clients get BUSY, and rqplus-operator's FUNCTION
    KILL stops it then; the same for an admin's EVAL and SCRIPT KILL."""
    threshold = int(deploy_setting("busy-reply-threshold")) / 1000
    admin = acl_server.client()
    admin.function_load("#!lua name=runaway\nredis.register_function{function_name='runaway', "
                        "callback=function() while true do end end, flags={'no-writes'}}")
    operator, producer = (Redis.from_url(acl_server.user_url(role)) for role in ("operator", "producer"))
    for command, kill in ((("FCALL_RO", "runaway", 0), operator.function_kill),
                          (("EVAL", "while true do end", 0), operator.script_kill)):
        outcome: dict[str, object] = {}

        def run(command=command, outcome=outcome) -> None:
            started = time.monotonic()
            try:
                acl_server.client().execute_command(*command)
            except ResponseError as error:
                outcome["error"] = str(error)
            outcome["took"] = time.monotonic() - started

        runner = threading.Thread(target=run)
        runner.start()
        time.sleep(0.2)
        with pytest.raises(BusyScriptError, match="busy running a script"):
            producer.ping()  # answered BUSY once the threshold has passed
        killed = time.monotonic()
        assert kill()
        runner.join(10)
        assert "killed" in str(outcome["error"]).lower(), outcome
        assert outcome["took"] < threshold + 1.0, outcome
        assert time.monotonic() - killed < 1.0
        assert producer.ping()
