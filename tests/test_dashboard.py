"""The dashboard without a browser: Flask's test client against a real Redis (conftest's private server).

Covers authentication, CSRF and same-origin checks, clean 404/409 answers, priority-keeping
requeue, forged payloads never unpickled, masking, metrics, the audit log and the CLI's refusals.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from html import unescape
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from markupsafe import escape
from redis import Redis
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq_scheduler import Scheduler

from rqplus import Queue, Worker, priority_of
from rqplus.cli import main
from rqplus.dashboard import Credentials, DashboardConfigError, Server, audit, create_app, metrics, security
from rqplus.dashboard.masking import Masker, shown
from rqplus.dashboard.payloads import DashboardJob
from rqplus.serializers import SafeSerializer, Withheld, withheld_in
from rqplus.embedded import RedisServer
from rqplus import requeue as runs
from rqplus.recovery import mark_alive, worker_identity
from tests.conftest import failed_in_bulk, wait_for
from tests import pickles
from tests.jobs import ran

USER, PASSWORD = "admin", "correct horse battery staple"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


@pytest.fixture
def app(redis: Redis, redis_server: RedisServer):
    return create_app(redis_server.url, credentials=Credentials(USER, PASSWORD), secret_key="test")


@pytest.fixture
def client(app) -> FlaskClient:
    """A client logged in through the form, holding the session's CSRF token in ``client.token``."""
    return logged_in(app)


def logged_in(app) -> FlaskClient:
    """A client of ``app`` logged in through the form, holding the session's CSRF token in ``client.token``."""
    client = app.test_client()
    client.get("/login")
    token = client.get_cookie("_csrf_token").value
    answer = client.post("/login", data={"username": USER, "password": PASSWORD, "_csrf_token": token})
    assert answer.status_code == 302
    client.get("/")  # the login started a fresh session: fetch its token
    client.token = client.get_cookie("_csrf_token").value
    return client


def count_calls(monkeypatch, owner: object, name: str):
    """Count the calls of ``owner.name`` from now on; returns a function giving the count."""
    original, calls = getattr(owner, name), []

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return lambda: len(calls)


def post(client: FlaskClient, path: str, **kwargs):
    headers = {"X-CSRFToken": client.token, "Origin": "http://localhost", **kwargs.pop("headers", {})}
    return client.post(path, headers=headers, **kwargs)


def finished(redis: Redis, run_id: str) -> runs.Run:
    """The bulk requeue ``run_id`` once its background thread ended it."""
    return wait_for(lambda: (run := runs.load(redis, run_id)) and not run.running and run)


def fail(job: Job, exc_string: str = "Traceback ...\nValueError: bad input") -> None:
    """Mark a queued job failed as a worker records it (without running one)."""
    queue = Queue(job.origin, connection=job.connection)
    job.connection.lrem(queue.key, 0, job.id)
    job.set_status(JobStatus.FAILED)
    queue.failed_job_registry.add(job, ttl=600, exc_string=exc_string)
    Result.create_failure(job, ttl=600, exc_string=exc_string)


# --- closed by default -------------------------------------------------------------------------

def test_refuses_to_start_without_credentials(redis_server: RedisServer, monkeypatch) -> None:
    monkeypatch.delenv("RQPLUS_DASHBOARD_USERNAME", raising=False)
    monkeypatch.delenv("RQPLUS_DASHBOARD_PASSWORD", raising=False)
    with pytest.raises(DashboardConfigError, match="RQPLUS_DASHBOARD_USERNAME"):
        create_app(redis_server.url)
    assert create_app(redis_server.url, auth=False).test_client().get("/").status_code == 200


def test_without_auth_only_loopback_host_names_are_answered(redis_server: RedisServer, redis: Redis) -> None:
    """DNS rebinding: a page at evil.example whose name an attacker resolves to 127.0.0.1 reaches
    the port, but names its own host: refused, and no CSRF token is handed out."""
    client = create_app(redis_server.url, auth=False).test_client()
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
    for host in ("evil.example:9181", "evil.example", "127.0.0.1.evil.example", "10.0.0.1"):
        answer = client.get("/", headers={"Host": host})
        assert answer.status_code == 403 and "loopback" in answer.text, host
        assert "_csrf_token" not in answer.headers.get("Set-Cookie", "")
        assert client.post(f"/rq/job/{job.id}/delete", headers={"Host": host, "Origin": f"http://{host}"}
                           ).status_code == 403
    assert redis.exists(job.key)
    for host in ("localhost:9181", "127.0.0.1:9181", "127.0.0.2", "[::1]:9181", "LOCALHOST"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host


def test_a_host_name_with_several_addresses_is_served_on_each(app, monkeypatch) -> None:
    """localhost is 127.0.0.1 and ::1 on many machines: waitress then serves two sockets."""
    import socket
    import urllib.request

    real = socket.getaddrinfo

    def both(host, *args, **kwargs):
        found = real(host, *args, **kwargs)
        return found + real("::1", *args, **kwargs) if host == "localhost" else found

    monkeypatch.setattr(socket, "getaddrinfo", both)
    server = Server(app, "localhost", 0)
    server.start()
    try:
        assert [url.split("//")[1].rsplit(":", 1)[0] for url in server.urls] == ["127.0.0.1", "[::1]"]
        for url in server.urls:
            assert urllib.request.urlopen(url + "login", timeout=5).status == 200
    finally:
        server.stop()
    assert not server._thread.is_alive()


def test_cli_refuses_without_credentials_and_no_auth_off_loopback(monkeypatch, redis_server: RedisServer) -> None:
    monkeypatch.delenv("RQPLUS_DASHBOARD_USERNAME", raising=False)
    monkeypatch.delenv("RQPLUS_DASHBOARD_PASSWORD", raising=False)
    result = CliRunner().invoke(main, ["dashboard", "--url", redis_server.url, "--port", "0"])
    assert result.exit_code == 2 and "RQPLUS_DASHBOARD_PASSWORD" in result.output
    result = CliRunner().invoke(main, ["dashboard", "--no-auth", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "loopback" in result.output


def every_route(app) -> list[tuple[str, str, str]]:
    """``(endpoint, method, path)`` for each route of ``app.url_map`` and method (HEAD aside), URL
    arguments filled in. Shared with the browser tests, which send the same list to the real server.
    """
    found = []
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<int:", "<").replace("<path:", "<")
        for arg in rule.arguments:
            path = path.replace(f"<{arg}>", "0" if arg in ("instance_number", "per_page", "page") else "x")
        found += [(rule.endpoint, method, path) for method in sorted(rule.methods - {"HEAD"})]
    assert len(found) > 20
    return found


def anonymous_answers(endpoint: str, method: str, wants_html: bool) -> set[int]:
    """What a request without credentials may get: the login form is the one open page (posting to
    it still needs the form's CSRF token); HTML page views redirect to it; the rest is refused."""
    if endpoint == "auth.login" and method in ("GET", "OPTIONS"):
        return {200}
    if method == "GET" and wants_html:
        return {302}
    return {401, 403}


def test_every_route_refuses_requests_without_credentials(app) -> None:
    client = app.test_client()
    for endpoint, method, path in every_route(app):
        for accept in ("application/json", "text/html"):
            answer = client.open(path, method=method, headers={"Accept": accept})
            assert answer.status_code in anonymous_answers(endpoint, method, accept == "text/html"), \
                (method, path, accept, answer.status_code)
            if answer.status_code == 302:
                assert answer.location.startswith("/login"), (method, path)


def test_basic_auth_for_scripts_and_wrong_passwords(app) -> None:
    client = app.test_client()
    assert client.get("/metrics", headers=BASIC).status_code == 200
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:nope".encode()).decode()}
    answer = client.get("/metrics", headers=wrong)
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Basic")


#: ``next=`` values that must not leave the site: browsers drop tabs and newlines from URLs and
#: read a backslash as a slash, so each of these would reach evil.example (or break the header).
FOREIGN_TARGETS = ("//evil.example/", "https://evil.example/", "/\\evil.example", "/\t/evil.example",
                   "/\n/evil.example", "/\r/x", "/ /evil.example", "/\x7f/evil.example", "/\x00/x")


def test_login_form_and_no_open_redirect(app) -> None:
    client = app.test_client()
    client.get("/login")
    token = client.get_cookie("_csrf_token").value
    wrong = client.post("/login", data={"username": USER, "password": "x", "_csrf_token": token})
    assert wrong.status_code == 401 and b"Wrong user name or password" in wrong.data
    for target in FOREIGN_TARGETS:                    # the POST login
        client = app.test_client()
        client.get("/login")
        token = client.get_cookie("_csrf_token").value
        answer = client.post("/login", data={"username": USER, "password": PASSWORD, "_csrf_token": token,
                                             "next": target})
        assert answer.status_code == 302 and answer.location == "/", (target, answer.location)
        assert client.get_cookie("_csrf_token").value != token  # a fresh session after login
    for target in FOREIGN_TARGETS:                    # already logged in: the immediate redirect
        answer = client.get("/login", query_string={"next": target})
        assert answer.status_code == 302 and answer.location == "/", (target, answer.location)
    assert client.get("/login?next=/failed%3Fqueue%3Dq").location == "/failed?queue=q"


def test_logout_ends_the_session_for_good_and_a_new_password_ends_old_sessions(app, client: FlaskClient,
                                                                            redis_server: RedisServer) -> None:
    captured = client.get_cookie(app.config["SESSION_COOKIE_NAME"]).value
    json_only = {"Accept": "application/json"}

    def replay(target_app) -> int:
        other = target_app.test_client()
        other.set_cookie(app.config["SESSION_COOKIE_NAME"], captured)
        return other.get("/metrics", headers=json_only).status_code

    assert replay(app) == 200
    same_secret_new_password = create_app(redis_server.url, credentials=Credentials(USER, "a new password"),
                                          secret_key="test")
    assert replay(same_secret_new_password) == 401
    assert post(client, "/logout").status_code == 302
    assert replay(app) == 401, "a cookie copied before logout no longer opens the dashboard"


def test_the_login_redirect_stays_inside_a_mounted_dashboard(app) -> None:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    host = app.test_client()
    host.application.wsgi_app = DispatcherMiddleware(lambda environ, start: [], {"/queues": app.wsgi_app})
    answer = host.get("/queues/failed?queue=q", headers={"Accept": "text/html"})
    assert answer.status_code == 302
    assert answer.location == "/queues/login?next=/queues/failed?queue%3Dq"


def test_repeated_failed_sign_ins_are_throttled(app, redis: Redis) -> None:
    client = app.test_client()
    client.get("/login")
    token = client.get_cookie("_csrf_token").value
    form = {"username": USER, "password": "guess", "_csrf_token": token}
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:guess".encode()).decode()}
    for attempt in range(security.LOGIN_FAILURES_LIMIT):   # form and Basic auth failures count alike
        answer = client.post("/login", data=form) if attempt % 2 else client.get("/metrics", headers=wrong)
        assert answer.status_code == 401, attempt
    refused = client.post("/login", data={**form, "password": PASSWORD})   # even the right password, now
    assert refused.status_code == 429 and "too many failed sign-ins" in refused.text
    assert 0 < int(refused.headers["Retry-After"]) <= security.LOGIN_FAILURES_WINDOW
    assert client.get("/metrics", headers=BASIC).status_code == 429
    assert client.get("/", headers={"Accept": "application/json"}).status_code == 401   # not signed in
    other = app.test_client()                              # another address is not affected
    assert other.get("/metrics", headers=BASIC, environ_base={"REMOTE_ADDR": "10.0.0.7"}).status_code == 200
    redis.delete(*redis.keys(security.LOGIN_FAILURES_KEY + ":*"))   # the window passed
    assert client.get("/metrics", headers=BASIC).status_code == 200


def test_security_headers(client: FlaskClient) -> None:
    answer = client.get("/rq/")
    policy = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy.split("style-src")[0]
    nonce = policy.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">'.encode() in answer.data  # rq-dashboard's inline script, patched
    assert answer.headers["X-Frame-Options"] == "DENY"


# --- cross-site requests -----------------------------------------------------------------------

def test_state_changes_need_the_token_and_the_same_origin(client: FlaskClient, redis: Redis) -> None:
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
    fail(job)
    path = f"/rq/job/{job.id}/requeue"
    assert client.post(path).status_code == 403                                     # no token
    assert post(client, path, headers={"X-CSRFToken": "forged"}).status_code == 403
    assert post(client, path, headers={"Origin": "http://evil.example"}).status_code == 403
    assert post(client, path, headers={"Origin": "", "Referer": "http://evil.example/x"}).status_code == 403
    assert post(client, path, headers={"Origin": "null"}).status_code == 403
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert post(client, path).status_code == 200
    assert job.get_status(refresh=True) == JobStatus.QUEUED


def test_requeue_all_refuses_get(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    jobs = [queue.enqueue("tests.jobs.record", str(n), priority=p) for n, p in enumerate((7, 1))]
    for job in jobs:
        fail(job)
    waiting = queue.enqueue("tests.jobs.record", "waiting", priority=4)
    answer = client.get("/rq/requeue/q", headers={"X-CSRFToken": client.token})
    assert answer.status_code == 405 and answer.headers["Allow"] == "POST"
    assert queue.count == 1
    answer = post(client, "/rq/requeue/q")
    assert answer.json["status"] == "OK" and answer.json["total"] == 2
    assert answer.json["progress"] == f"/requeue?run={answer.json['run']}"
    assert finished(redis, answer.json["run"]).done == 2
    assert queue.get_job_ids() == [jobs[1].id, waiting.id, jobs[0].id]   # each at its priority


# --- actions answer cleanly --------------------------------------------------------------------

def test_requeue_unknown_or_not_failed_job(client: FlaskClient, redis: Redis) -> None:
    answer = post(client, "/rq/job/no-such-job/requeue")
    assert answer.status_code == 404 and "no job 'no-such-job'" in answer.json["message"]
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
    answer = post(client, f"/rq/job/{job.id}/requeue")
    assert answer.status_code == 409 and "is queued, not failed" in answer.json["message"]
    assert client.get("/rq/0/view/job/no-such-job", headers={"Accept": "text/html"}).status_code == 404
    assert client.get("/rq/0/data/job/no-such-job.json").status_code == 404
    assert post(client, "/rq/job/no-such-job/delete").status_code == 404


def test_requeue_keeps_priority_and_json_jobs_stay_json(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis, serializer=JSONSerializer)
    urgent = queue.enqueue("tests.jobs.record", "urgent", priority=0, meta={"tenant": 7})
    fail(urgent)
    later = [queue.enqueue("tests.jobs.record", str(n)) for n in range(3)]
    assert post(client, f"/rq/job/{urgent.id}/requeue").json == {"status": "OK"}
    assert queue.get_job_ids() == [urgent.id] + [job.id for job in later]
    assert json.loads(redis.hget(urgent.key, "meta")) == {"priority": 0, "tenant": 7}  # still JSON
    entry = audit.entries(redis)[0]
    assert (entry["user"], entry["action"], entry["target"]) == (USER, "requeue", f"job {urgent.id}")


def test_requeue_refuses_meta_it_could_not_load_and_leaves_it_as_it_was(client: FlaskClient, redis: Redis) -> None:
    from pathlib import PurePosixPath  # a class outside the standard data classes the dashboard builds

    queue = Queue("q", connection=redis)
    loaded_in_part = queue.enqueue("tests.jobs.record", "a", meta={"where": PurePosixPath("/x")}, priority=1)
    unreadable = queue.enqueue("tests.jobs.record", "b", priority=1)
    fail(loaded_in_part)
    fail(unreadable)
    redis.hset(unreadable.key, "meta", b"\x80\x05not a pickle")
    before = {job.id: redis.hget(job.key, "meta") for job in (loaded_in_part, unreadable)}
    answer = post(client, f"/rq/job/{loaded_in_part.id}/requeue")
    assert answer.status_code == 409 and "pathlib.PurePosixPath" in answer.json["message"]
    answer = post(client, f"/rq/job/{unreadable.id}/requeue")
    assert answer.status_code == 409 and "meta that cannot be read" in answer.json["message"]
    run = finished(redis, post(client, "/rq/requeue/q").json["run"])
    assert (run.done, run.skipped) == (0, 2)
    assert {job.id: redis.hget(job.key, "meta") for job in (loaded_in_part, unreadable)} == before
    assert queue.count == 0 and FailedJobRegistry("q", connection=redis).count == 2


def test_delete_and_empty_are_audited(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    jobs = [queue.enqueue("tests.jobs.record", str(n)) for n in range(3)]
    assert post(client, f"/rq/job/{jobs[0].id}/delete").json == {"status": "OK"}
    fail(jobs[1])
    assert post(client, "/rq/queue/q/failed/empty").json == {"status": "OK", "count": 1}
    assert post(client, "/rq/queue/q/queued/empty").json == {"status": "OK", "count": 1}
    assert post(client, "/rq/queue/q/nonsense/empty").status_code == 404
    assert not redis.exists(*(job.key for job in jobs))
    actions = [(e["action"], e["target"]) for e in audit.entries(redis)]
    assert actions == [("empty", "queue q (queued)"), ("empty", "queue q (failed)"), ("delete", f"job {jobs[0].id}")]
    assert client.get("/audit").data.count(USER.encode()) >= 3


def test_audit_log_is_bounded(redis: Redis) -> None:
    for n in range(audit.AUDIT_LENGTH + 5):
        audit.record(redis, "u", "requeue", f"job {n}")
    assert redis.llen(audit.AUDIT_KEY) == audit.AUDIT_LENGTH
    assert audit.entries(redis, 1)[0]["target"] == f"job {audit.AUDIT_LENGTH + 4}"


def confirmation(client: FlaskClient, query: str) -> dict[str, str]:
    """The hidden fields of the bulk requeue's confirmation form, as the failed-jobs page's
    "Requeue these N jobs" button (a GET with the page's filters) shows it."""
    form = client.get(f"/failed/requeue?{query}").text.split('id="confirm-requeue"')[1].split("</form>")[0]
    return dict(re.findall(r'name="(expected|selection)" value="([^"]*)"', form))


def test_bulk_requeue_by_function_and_exception_with_count_first(client: FlaskClient, redis: Redis,
                                                                 monkeypatch) -> None:
    queue = Queue("q", connection=redis)
    records = [queue.enqueue("tests.jobs.record", str(n), priority=n) for n in range(3)]
    other = queue.enqueue("tests.jobs.fail", "other")
    for job in records:
        fail(job)
    fail(other, "Traceback ...\nRuntimeError: other")
    # the latest results are read in one pipeline, not one round trip per job
    monkeypatch.setattr(DashboardJob, "latest_result", lambda *a, **k: pytest.fail("latest_result per job"))
    page = client.get("/failed?function=tests.jobs.record&exception=ValueError")
    assert b'<strong id="match-count">3</strong>' in page.data
    shown = confirmation(client, "function=tests.jobs.record&exception=ValueError")
    assert shown["expected"] == "3"
    form = {"function": "tests.jobs.record", "exception": "ValueError"}
    stale = post(client, "/failed/requeue", data={**form, **shown, "selection": "0" * 64})
    assert stale.status_code == 409 and queue.count == 0
    restores = count_calls(monkeypatch, Job, "restore")
    answer = post(client, "/failed/requeue", data={**form, **shown})
    assert answer.status_code == 302 and answer.location.startswith("/requeue?run=")
    run = finished(redis, answer.location.split("=")[1])
    # each listed once (pipelined; `other` too, to be filtered out), then loaded once more by RQ's requeue
    assert restores() <= 2 * len(records) + 1
    assert queue.get_job_ids() == [job.id for job in records]
    assert FailedJobRegistry("q", connection=redis).get_job_ids() == [other.id]
    wait_for(lambda: audit.entries(redis)[0]["action"] == "requeue-many")
    assert audit.entries(redis)[0]["count"] == run.done == 3


def test_bulk_requeue_refuses_another_selection_of_the_same_size(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    first, second, third = (queue.enqueue("tests.jobs.record", str(n)) for n in range(3))
    fail(first)
    fail(second)
    shown = confirmation(client, "queue=q")
    assert shown["expected"] == "2"
    FailedJobRegistry("q", connection=redis).remove(first, delete_job=True)   # meanwhile: one gone,
    fail(third)                                                                # another failed
    refused = post(client, "/failed/requeue", data={"queue": "q", **shown})
    assert refused.status_code == 409 and "selection changed" in refused.json["message"]
    assert queue.count == 0 and FailedJobRegistry("q", connection=redis).count == 2



def test_bulk_requeue_runs_in_the_background_with_a_progress_page(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    failed_in_bulk(queue, 3000)
    answer = post(client, "/rq/requeue/q", headers={"Accept": "text/html"})
    assert answer.status_code == 302 and answer.location.startswith("/requeue?run=")
    run_id = answer.location.split("=")[1]
    page = client.get(answer.location).text
    assert f'data-run="{run_id}"' in page and "3,000 examined" in page
    run = finished(redis, run_id)
    assert (run.status, run.done, run.total) == ("done", 3000, 3000) and queue.count == 3000
    page = client.get(answer.location).text
    assert 'data-status="done"' in page and '<td class="run-done">3,000</td>' in page
    assert 'http-equiv="refresh"' not in page                             # nothing running: no reload
    assert f'data-run="{run_id}"' in client.get("/requeue").text          # listed among the latest
    for odd in ("runs", f"{run_id}:owner", "x" * 5000):                   # other keys are never read
        assert client.get(f"/requeue?run={odd}").status_code == 200
    start, end = (next(e for e in audit.entries(redis) if e["action"] == action)
                  for action in ("requeue-start", "requeue-many"))
    assert (start["user"], start["target"], start["run"], start["total"]) == (USER, "failed jobs queue=q", run_id, 3000)
    assert (end["user"], end["count"], end["skipped"]) == (USER, 3000, 0)


def test_six_concurrent_requeue_all_posts_make_one_run_the_others_join(app, redis: Redis, monkeypatch) -> None:
    monkeypatch.setenv("RQPLUS_REQUEUE_THROTTLE", "2")     # 3 batches 2 s apart: the run outlasts the posts
    queue = Queue("q", connection=redis)
    failed_in_bulk(queue, 3000)
    clients = [logged_in(app) for _ in range(6)]
    barrier, answers = threading.Barrier(6), []

    def requeue_all(each: FlaskClient) -> None:
        barrier.wait()
        answers.append(post(each, "/rq/requeue/q").json)

    threads = [threading.Thread(target=requeue_all, args=(each,)) for each in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len({answer["run"] for answer in answers}) == 1 and len(answers) == 6
    assert sorted(answer["joined"] for answer in answers) == [False] + [True] * 5
    run = finished(redis, answers[0]["run"])
    assert (run.done, queue.count, len(runs.runs(redis))) == (3000, 3000, 1)
    wait_for(lambda: audit.entries(redis)[0]["action"] == "requeue-many")
    actions = [entry["action"] for entry in audit.entries(redis)]
    assert sorted(actions) == ["requeue-join"] * 5 + ["requeue-many", "requeue-start"]


def test_the_confirmation_counts_the_jobs_names_a_running_run_and_confirming_joins_it(
        client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    failed_in_bulk(queue, 40)
    page = client.get("/failed/requeue?queue=q").text
    assert '<strong id="confirm-count">40</strong>' in page and 'id="confirm-requeue-btn"' in page
    assert "already-running" not in page
    running, _ = runs.start(redis, "q", runs.Filters(exception="KeyError"), user="ops")   # another user's run...
    assert runs.claim(redis, running.id, "another dashboard")                            # ... driven elsewhere
    page = unescape(client.get("/failed/requeue?queue=q").text)
    assert f'class="already-running" data-run="{running.id}"' in page
    assert "(exception=KeyError, 0 of 40 examined" in page
    assert "confirming joins it, and this queue's jobs of other filters wait for the next run" in page

    answer = post(client, "/failed/requeue", data={"queue": "q", **confirmation(client, "queue=q")})
    assert answer.status_code == 302 and answer.location == f"/requeue?run={running.id}&joined={running.id}"
    page = client.get(answer.location).text
    assert f'class="alert alert-info joined-run" data-run="{running.id}"' in page and "you joined it" in page
    assert post(client, "/rq/requeue/q").json["joined"] is True                     # the JSON answer says so too
    assert [run.id for run in runs.runs(redis)] == [running.id] and queue.count == 0   # still the other's to drive
    assert [entry["action"] for entry in audit.entries(redis)] == ["requeue-join", "requeue-join"]
    page = client.get("/failed/requeue?queue=nope&function=x").text
    assert 'id="nothing-to-requeue"' in page and "confirm-requeue-btn" not in page


def test_bulk_requeue_needs_the_token_and_a_user(app, client: FlaskClient, redis: Redis) -> None:
    failed_in_bulk(Queue("q", connection=redis), 3)
    for path in ("/rq/requeue/q", "/failed/requeue"):
        assert client.post(path, data={"queue": "q"}, headers={"Origin": "http://localhost"}).status_code == 403
        assert app.test_client().post(path, data={"queue": "q"}).status_code == 401
    assert post(client, "/rq/requeue/nope").status_code == 404
    assert runs.runs(redis) == [] and FailedJobRegistry("q", connection=redis).count == 3


def test_a_dashboard_start_resumes_a_requeue_whose_process_died(redis: Redis, redis_server: RedisServer) -> None:
    queue = Queue("q", connection=redis)
    failed_in_bulk(queue, 50)
    run, _ = runs.start(redis, "q", user="admin")                # started by a dashboard that died at once
    create_app(redis_server.url, credentials=Credentials(USER, PASSWORD), secret_key="test")
    assert finished(redis, run.id).done == 50 and queue.count == 50


# --- forged payloads and secrets ---------------------------------------------------------------

class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def forge_failed_job(redis: Redis, job_id: str, marker: Path) -> None:
    """A job hash as an attacker with Redis access writes it: pickles that run a command when loaded."""
    payload = pickle.dumps(_Exploit(marker))
    data = pickle.dumps(("tests.jobs.record", None, (_Exploit(marker),), {}), protocol=pickle.HIGHEST_PROTOCOL)
    redis.hset(f"rq:job:{job_id}", mapping={"data": zlib.compress(data), "meta": payload, "origin": "q",
                                            "status": "failed", "description": "forged", "created_at": "2025-01-01T00:00:00.000000Z"})
    redis.zadd("rq:failed:q", {job_id: 9999999999})
    redis.sadd("rq:queues", "rq:queue:q")


def test_forged_pickles_are_never_unpickled(client: FlaskClient, redis: Redis, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    forge_failed_job(redis, "forged", marker)
    for path in ("/rq/0/view/job/forged", "/rq/0/data/jobs/q/failed/8/asc/1.json", "/failed", "/", "/metrics"):
        assert client.get(path).status_code == 200, path
    info = client.get("/rq/0/data/job/forged.json").json
    assert "not loaded: posix.system" in info["metadata"]
    answer = post(client, "/rq/job/forged/requeue")
    assert answer.status_code == 409 and "posix.system" in answer.json["message"]
    assert not marker.exists()


@pytest.mark.parametrize("title, meta, reason", [
    ("BUILD on Counter", pickles.MUTATIONS["BUILD on Counter"], "applies BUILD to a class collections.Counter"),
    ("BUILD on Fraction", pickles.MUTATIONS["BUILD on Fraction"], "applies BUILD to a class fractions.Fraction"),
    ("int(Decimal('1e1000000'))", pickles.BOMBS["int(Decimal('1e1000000'))"], "decimal of exponent 1000000"),
])
def test_a_forged_meta_is_shown_with_its_reason_and_changes_nothing(client: FlaskClient, redis: Redis, title, meta,
                                                                    reason) -> None:
    """Issue 19: a meta that BUILDs on a class (the dashboard's process kept the change) or converts a
    huge Decimal (26 s a view, job.json 500): each view answers at once, with why, and nothing changed."""
    before = pickles.fingerprint()
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
    fail(job)
    redis.hset(job.key, "meta", meta)
    assert client.get(f"/rq/0/view/job/{job.id}").status_code == 200
    info = client.get(f"/rq/0/data/job/{job.id}.json")
    assert info.status_code == 200
    [(key, shown_meta)] = json.loads(info.json["metadata"]).items()
    assert key == "unserialized" and shown_meta.startswith("<not loaded: UnsafePickleError: the pickle ")
    assert reason in shown_meta and shown_meta.endswith("nothing of it was used>")
    assert client.get("/rq/0/data/jobs/q/failed/8/asc/1.json").status_code == 200
    answer = post(client, f"/rq/job/{job.id}/requeue")
    assert answer.status_code == 409 and "meta that cannot be read" in answer.json["message"]
    assert pickles.fingerprint() == before and redis.hget(job.key, "meta") == meta


def test_safe_serializer_reads_plain_data_and_withholds_the_rest() -> None:
    when = datetime(2025, 1, 2, tzinfo=timezone.utc)
    plain = {"a": [1, 2.5, "x", None, True], "when": when, "tags": {"x"}, "span": timedelta(seconds=3)}
    assert SafeSerializer.loads(pickle.dumps(plain)) == plain
    assert SafeSerializer.loads(JSONSerializer.dumps({"a": 1})) == {"a": 1}
    loaded = SafeSerializer.loads(pickle.dumps({"path": Path("/tmp")}))
    assert isinstance(loaded["path"], Withheld) and withheld_in(loaded) == ["pathlib.PosixPath"]


def test_shown_masks_once_however_deep(monkeypatch) -> None:
    masker = Masker()
    calls = count_calls(monkeypatch, masker, "data")   # Masker.data recurses through this too
    deep: object = {"password": "p", "note": "token=abc"}
    for _ in range(30):
        deep = {"level": [deep]}
    text = json.dumps(shown(deep, masker))
    assert '"password": "***"' in text and "token=***" in text
    assert calls() <= 2 * 30 + 3        # one call per node: masked once, not again at every level
    # (masking again at every level visits about 2 * 30 * 30 / 2 nodes)


def test_masking_in_text_and_data(monkeypatch) -> None:
    masker = Masker()
    assert masker.text("charge(7, card='4111 1111', user_password=\"p w\", note='ok')") == \
        "charge(7, card='***', user_password=\"***\", note='ok')"
    assert masker.text("https://x/cb?api_token=abc&page=2") == "https://x/cb?api_token=***&page=2"
    assert masker.text("CardError: card='4111 1111' secret: https://u:p@x/") == "CardError: card='***' secret: ***"
    assert masker.data({"user": 1, "IBAN": "DE89", "nested": [{"cvv": 123}]}) == \
        {"user": 1, "IBAN": "***", "nested": [{"cvv": "***"}]}
    monkeypatch.setenv("RQPLUS_DASHBOARD_MASK_KEYS", "pin,-password")
    assert Masker().data({"pin": 1, "password": "shown"}) == {"pin": "***", "password": "shown"}


def test_secrets_are_masked_on_every_page(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    job = queue.enqueue("tests.jobs.record", "order 42", card="4111 1111 1111 1111",
                        meta={"api_token": "tok-123", "customer": {"iban": "DE8937040044"}})
    fail(job, "Traceback ...\nCardDeclined: card='4242 4242 4242 4242' password=hunter2 for order 42")
    pages = [f"/rq/0/data/job/{job.id}.json", "/rq/0/data/jobs/q/failed/8/asc/1.json"]
    answers = [client.get(path).json for path in pages]
    bodies = json.dumps(answers).encode()
    assert b"order 42" in bodies and b"***" in bodies
    for secret in (b"4111", b"tok-123", b"DE8937", b"4242", b"hunter2"):
        assert secret not in bodies, secret
    assert answers[0]["exc_info"].endswith("card='***' password=*** for order 42")      # job_info
    assert answers[1]["jobs"][0]["exc_info"].endswith("card='***' password=*** for order 42")  # list_jobs


def test_job_info_loads_the_job_once(client: FlaskClient, redis: Redis, monkeypatch) -> None:
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "x", meta={"tenant": 7})
    restores = count_calls(monkeypatch, Job, "restore")
    info = client.get(f"/rq/0/data/job/{job.id}.json").json
    assert (info["id"], info["status"], info["origin"], json.loads(info["metadata"])["tenant"]) == (job.id, "queued", "q", 7)
    assert restores() == 1


# --- rqplus views ------------------------------------------------------------------------------

def test_overview_shows_priorities_durability_schedule_and_workers(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("emails", connection=redis)
    for priority in (0, 0, 3, 9):
        queue.enqueue("tests.jobs.record", "x", priority=priority)
    page = client.get("/").data.decode()
    assert "Redis is not durable" in page and "AOF is off" in page       # conftest's server: appendonly no
    assert "Nothing scheduled with rq-scheduler" in page and "No workers." in page
    Scheduler(connection=redis).enqueue_in(timedelta(minutes=5), "tests.jobs.record", "later", password="s3")
    page = client.get("/").data.decode()
    assert "tests.jobs.record(&#39;later&#39;, password=&#39;***&#39;)" in page
    assert '<td class="">2</td>' in page                                 # two jobs at P0


def workers_table(page: str) -> dict[str, list[str]]:
    """The overview's workers table: worker name -> the HTML of its other cells (class, jobs at
    once, state, queues, running now)."""
    table = page.split('id="workers"')[1].split("</table>")[0]
    return {unescape(name): re.findall(r"<td[^>]*>(.*?)</td>", row)[1:]
            for name, row in re.findall(r'<tr data-worker="([^"]*)">(.*?)</tr>', table)}


def running_links(cell: str) -> list[str]:
    """The job ids a "running now" cell links to, in order (each link leads to the job's page)."""
    return re.findall(r'<a href="/rq/0/view/job/([^"]+)"', cell)


def test_workers_are_listed_with_their_class_and_concurrency(client: FlaskClient, redis: Redis,
                                                            redis_server: RedisServer, processes) -> None:
    processes.rq_worker(redis_server.url, "emails", burst=False)
    processes.rq_worker(redis_server.url, "q", worker_class="rq.SimpleWorker", queue_class=None, burst=False)
    # an rqplus worker writes its class with its first heartbeat, just after it registers; both
    # are "started" until they block for jobs
    wait_for(lambda: sorted((w.kind, w.state) for w in metrics.workers(redis)) ==
             [("rqplus.worker.Worker", "idle"), (metrics.STOCK_WORKER, "idle")])
    page = client.get("/").data.decode()
    assert "<th title=\"the most jobs it runs at the same time\">Jobs at once</th>" in page
    rows = {cells[3]: cells[:3] + [running_links(cells[4])] for cells in workers_table(page).values()}
    assert rows == {"emails": ["rqplus.worker.Worker", "1", "idle", []], "q": ["stock RQ worker", "1", "idle", []]}
    assert 'rqplus_workers{class="rqplus.worker.Worker",state="idle"} 1' in client.get("/metrics").data.decode()


class EightAtOnce(Worker):
    """Stands in for a worker running several jobs at once (its marker says 8)."""

    concurrency = 8


def round_trips(monkeypatch) -> Callable[[], int]:
    """Count the round trips to Redis from now on: single commands, and pipelines sent."""
    from redis.client import Pipeline

    sent = []
    command, execute = Redis.execute_command, Pipeline.execute

    def single(self, *args, **options):
        sent.append(args[0])
        return command(self, *args, **options)

    def pipelined(self, *args, **options):
        if self.command_stack:
            sent.append("pipeline")
        return execute(self, *args, **options)

    monkeypatch.setattr(Redis, "execute_command", single)
    monkeypatch.setattr(Pipeline, "execute", pipelined)
    return lambda: len(sent)


def test_a_worker_running_several_jobs_shows_each_with_its_jobs_at_once(client: FlaskClient, redis: Redis,
                                                                         monkeypatch) -> None:
    """A worker registered by RQ, its marker saying 8 at once, running 3 jobs as RQ records them
    (one Execution each, in a pipeline); an execution whose hash expired no longer runs."""
    queue = Queue("emails", connection=redis)
    jobs = [queue.enqueue("tests.jobs.record", f"job {n}") for n in range(4)]
    worker = Worker(["emails"], connection=redis, name="pool-1")
    worker.register_birth()
    worker.set_state("busy")
    mark_alive(redis, worker.name, 60, worker_identity(EightAtOnce, 8))
    Worker(["emails"], connection=redis, name="idle-1").register_birth()   # same queue, runs nothing
    with redis.pipeline() as pipe:
        executions = [Execution.create(job, 60, pipe, worker_name=worker.name) for job in jobs]
        pipe.execute()
    redis.delete(executions[3].key)                                         # expired: it stopped
    running = [job.id for job in jobs[:3]]

    rows = workers_table(client.get("/").text)
    kind = "tests.test_dashboard.EightAtOnce"
    assert rows["pool-1"][:4] == [kind, "8", "busy", "emails"]
    assert '<span class="running-count">3</span>' in rows["pool-1"][4]
    assert sorted(running_links(rows["pool-1"][4])) == sorted(running)
    assert rows["pool-1"][4].count("tests.jobs.record") >= 3                 # each job's function
    assert rows["idle-1"][:2] == [metrics.STOCK_WORKER, "1"] and running_links(rows["idle-1"][4]) == []
    lines = client.get("/metrics").text.splitlines()
    assert f'rqplus_worker_running_jobs{{worker="pool-1",class="{kind}"}} 3' in lines
    assert f'rqplus_worker_concurrency{{worker="pool-1",class="{kind}"}} 8' in lines
    assert 'rqplus_worker_running_jobs{worker="idle-1",class="stock RQ worker"} 0' in lines

    found = {w.name: w for w in metrics.workers(redis)}
    assert [job.function for job in found["pool-1"].running] == ["tests.jobs.record"] * 3
    assert all(job.since and abs(job.since.timestamp() - time.time()) < 60 for job in found["pool-1"].running)
    assert found["pool-1"].current_job_id in running and found["idle-1"].current_job_id is None

    # the whole table in a fixed number of round trips, however many workers and jobs
    counted = round_trips(monkeypatch)
    metrics.workers(redis)
    few = counted()
    for n in range(6):
        more = Worker(["emails"], connection=redis, name=f"pool-{n + 2}")
        more.register_birth()
        with redis.pipeline() as pipe:
            for job in [queue.enqueue("tests.jobs.record", f"more {n} {m}") for m in range(3)]:
                Execution.create(job, 60, pipe, worker_name=more.name)
            pipe.execute()
    counted = round_trips(monkeypatch)
    assert sum(len(w.running) for w in metrics.workers(redis)) == 3 + 6 * 3
    assert counted() == few <= 4


def test_forged_worker_and_job_names_are_shown_as_text(client: FlaskClient, redis: Redis) -> None:
    name, job_id = "<b>w</b>", '"><script>x()</script>'
    Worker(["q"], connection=redis, name=name).register_birth()
    job = Job(connection=redis)
    job._id, job.origin = job_id, "q"      # an id RQ refuses: only a forged entry holds one
    with redis.pipeline() as pipe:
        Execution.create(job, 60, pipe, worker_name=name)
        pipe.execute()
    for odd in ("a:b:c", b"\xff:x", "no-execution-id"):   # in rq 3.0's index, and rq 2.12's registry
        redis.sadd(f"rq:worker:{name}:executions", odd)
        redis.zadd(StartedJobRegistry("q", connection=redis).key, {odd: 9_999_999_999})
    page = client.get("/").text
    assert "<b>w" not in page and "<script>x" not in page
    rows = workers_table(page)
    assert list(rows) == [name] and '<span class="running-count">1</span>' in rows[name][4]
    assert escape(job_id) in rows[name][4]


def test_the_workers_page_shows_each_workers_running_job(client: FlaskClient, redis: Redis,
                                                         redis_server: RedisServer, processes) -> None:
    """rq 3.0 no longer keeps the current job in the worker hash: rq-dashboard finds it in its
    executions; the overview lists it under its worker."""
    processes.rq_worker(redis_server.url, "emails", burst=False)
    processes.rq_worker(redis_server.url, "q", worker_class="rq.Worker", queue_class=None, burst=False)
    busy = {"emails": Queue("emails", connection=redis).enqueue("tests.jobs.record", "rqplus-busy", 30),
            "q": Queue("q", connection=redis).enqueue("tests.jobs.record", "stock-busy", 30)}
    wait_for(lambda: len(set(ran(redis))) == 2, timeout=30)

    def running() -> dict[str, str]:
        workers = client.get("/rq/0/data/workers.json").json["workers"]
        return {worker["queues"][0]: worker["current_job"]["job_id"]
                for worker in workers if isinstance(worker["current_job"], dict)}

    assert wait_for(lambda: running() == {name: job.id for name, job in busy.items()})
    page = client.get("/rq/0/view/workers")
    assert page.status_code == 200
    rows = {cells[3]: (cells[0], running_links(cells[4])) for cells in workers_table(client.get("/").text).values()}
    assert rows == {"emails": ("rqplus.worker.Worker", [busy["emails"].id]),
                    "q": (metrics.STOCK_WORKER, [busy["q"].id])}


def test_metrics_in_prometheus_format(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    queue.enqueue("tests.jobs.record", "x", priority=1)
    queue.enqueue("tests.jobs.record", "y", priority=1)
    fail(queue.enqueue("tests.jobs.record", "z"))
    answer = client.get("/metrics")
    assert answer.content_type.startswith("text/plain; version=0.0.4")
    lines = answer.data.decode().splitlines()
    for expected in ('rqplus_queue_jobs{queue="q",priority="1"} 2', 'rqplus_queue_depth{queue="q"} 2',
                     'rqplus_failed_jobs{queue="q"} 1', "rqplus_redis_durable 0", "# TYPE rqplus_workers gauge"):
        assert expected in lines


def test_odd_job_data_and_urls_answer_cleanly(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    queue.enqueue("tests.jobs.record", "x")
    redis.hset(queue.fetch_job(queue.get_job_ids()[0]).key, "enqueued_at", "garbage")
    scheduled = Scheduler(connection=redis).enqueue_in(timedelta(minutes=5), "tests.jobs.record", "later")
    redis.hset(scheduled.key, "meta", pickle.dumps(["not", "a", "dict"]))
    for path in ("/", "/metrics", "/failed"):
        assert client.get(path).status_code == 200, path
    for path in ("/rq/0/data/jobs/q/failed/abc/asc/1.json", "/rq/0/data/jobs/q/failed/0/asc/1.json",
                 "/rq/0/data/jobs/q/failed/8/asc/0.json", "/rq/0/data/jobs/q/nonsense/8/asc/1.json"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.json["status"] == "ERROR", path


def test_a_job_failed_without_a_result_entry_shows_its_reason(client: FlaskClient, redis: Redis) -> None:
    """rqplus' quarantine of unreadable jobs writes exc_info into the job hash, with no Result."""
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
    fail(job)
    redis.delete(Result.get_key(job.id))
    redis.hset(job.key, "exc_info", zlib.compress(b"Traceback ...\nValueError: unreadable job data"))
    assert client.get(f"/rq/0/data/job/{job.id}.json").json["exc_info"].endswith("ValueError: unreadable job data")
    assert "ValueError" in client.get("/failed").text


def test_the_failed_page_says_when_a_queue_holds_more_than_it_looks_at(client: FlaskClient, redis: Redis,
                                                                       monkeypatch) -> None:
    from rqplus.dashboard import actions

    monkeypatch.setattr(actions, "BULK_SCAN_LIMIT", 2)
    queue = Queue("q", connection=redis)
    for n in range(3):
        fail(queue.enqueue("tests.jobs.record", str(n)))
    page = client.get("/failed").text
    assert 'id="beyond-scan"' in page and "q holds 3" in page
    assert '<strong id="match-count">2</strong>' in page


def test_masking_takes_linear_time_on_long_words() -> None:
    """The key pattern once started at every character of a word and backtracked through it:
    40 KB of hex in an exception text took 48 s. Here 2 MB must finish well inside the timeout;
    so must bracketed values that nest deep, never close, or hold quotes that never close."""
    program = ("from rqplus.dashboard.masking import Masker; m = Masker(); "
               "[m.text(t) for t in ('a' * 2_000_000, 'card' * 500_000, 'x card' * 300_000, "
               "'password=' + '[' * 2_000_000, 'x card=[' * 300_000, 'card=(' + chr(39) + chr(92) * 2_000_000, "
               "'x card=a(' * 300_000, 'x card=' + chr(39) * 300_000)]")
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)


def test_a_bad_priority_field_does_not_break_the_pages(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    jobs = [queue.enqueue("tests.jobs.record", str(n), priority=0) for n in range(3)]
    for job, forged in zip(jobs, (b"x", b"12", b"\xff")):   # corrupted, out of range, not even text
        redis.hset(queue.window_key, job.id, forged)
    assert client.get("/").status_code == 200
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert 'rqplus_queue_jobs{queue="q",priority="5"} 3' in answer.text.splitlines()   # counted at the default
    assert metrics.stored_priority(None) == 5 and metrics.stored_priority(b"3") == 3


def test_depth_samples_take_redis_ids_whatever_the_dashboard_clock(redis: Redis, monkeypatch) -> None:
    Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
    real = time.time
    for skew in (86400, -86400):   # two dashboards a day apart, one after the other
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        redis.delete(metrics.DEPTH_LOCK_KEY)
        assert metrics.sample_depths(redis) is not None
    monkeypatch.setattr(time, "time", real)
    server_now = metrics.redis_time(redis)
    history = metrics.depth_history(redis)["q"]
    assert len(history) == 2 and all(abs(at - server_now) < 5 for at, _ in history)
    assert history[-1][1] == 1
    assert metrics.sample_depths(redis) is None      # throttled: one sample per interval


def test_json_polls_reuse_one_redis_client(client: FlaskClient, redis: Redis) -> None:
    Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
    client.get("/rq/0/data/queues.json")                # the pools are warm
    before = redis.info("stats")["total_connections_received"]
    for _ in range(20):
        assert client.get("/rq/0/data/queues.json").status_code == 200
        assert client.get("/rq/0/data/workers.json").status_code == 200
    assert redis.info("stats")["total_connections_received"] - before <= 2   # was one per poll
    assert client.get("/rq/1/data/queues.json").status_code == 404           # one Redis: instance 0


def test_public_functions_say_how_to_use_them() -> None:
    import importlib
    import inspect
    import pkgutil

    import rqplus.dashboard as package
    missing = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            members = [(name, obj)] if inspect.isfunction(obj) else []
            if inspect.isclass(obj):
                members += [(f"{name}.{member}", inspect.unwrap(getattr(obj, member)))
                            for member, value in vars(obj).items() if not member.startswith("_")
                            and inspect.isfunction(getattr(value, "__func__", value))]
                if not obj.__doc__:
                    missing.append(name)
            missing += [f"{module.__name__}.{label}" for label, function in members
                        if "Usage" not in (function.__doc__ or "") or "return" not in function.__annotations__]
    assert missing == []


# --- second round (issue 9): what an attacker with and without credentials found ---------------

@pytest.fixture
def acl_user(redis: Redis):
    """A Redis user ``u`` with password ``S3cret`` on the session's server, removed afterwards."""
    redis.acl_setuser("u", enabled=True, passwords=["+S3cret"], commands=["+@all"], keys=["*"], channels=["*"])
    yield "u"
    redis.acl_deluser("u")


def test_a_redis_password_in_the_url_is_on_no_page(redis: Redis, redis_server: RedisServer, acl_user: str) -> None:
    """rq-dashboard's instance selector redacted only a password before "@": one given as redis-py's
    ``?password=`` query parameter (or under a percent-encoded name, which redis-py reads too) was
    printed on every rq-dashboard page."""
    for query in ("username=u&password=S3cret", "username=u&pass%77ord=S3cret"):
        app = create_app(f"redis://127.0.0.1:{redis_server.port}/0?{query}",
                         credentials=Credentials(USER, PASSWORD), secret_key="test")
        client = logged_in(app)
        job = Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
        fail(job)
        pages = [path for _, method, path in every_route(app) if method == "GET"] + [
            f"/rq/0/view/job/{job.id}", f"/rq/0/data/job/{job.id}.json", "/rq/0/view/jobs/q/failed/8/asc/1",
            "/rq/0/data/jobs/q/failed/8/asc/1.json"]
        for path in pages:
            answer = client.get(path, headers={"Accept": "text/html"})
            assert b"S3cret" not in answer.data, (query, path)
        overview = client.get("/rq/")
        assert overview.status_code == 200 and "=***" in overview.text   # served: the client has the password
        assert "S3cret" not in json.dumps(app.config["RQ_DASHBOARD_REDIS_URL"])


def test_the_failed_page_masks_exception_text_on_any_line(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    for message in ("db failed\npassword=hunter2", "db failed\u2028password=hunter2"):
        fail(queue.enqueue("tests.jobs.record", "x"),
             f'Traceback (most recent call last):\n  File "tasks.py", line 3, in f\nRuntimeError: {message}')
    page = client.get("/failed").text
    assert "hunter2" not in page
    assert page.count("<td>RuntimeError</td>") == 2   # the exception's type, whichever line the message ends on
    assert "hunter2" not in json.dumps(client.get("/rq/0/data/jobs/q/failed/8/asc/1.json").json)


def test_masking_hides_whole_containers(client: FlaskClient, redis: Redis) -> None:
    masker = Masker()
    for text, masked in (
            ("f(password=['a', 'b'], n=1)", "f(password=***, n=1)"),
            ("f(password={'k': 'v'}, n=1)", "f(password=***, n=1)"),
            ("f(secret=('one two', 'x'), n=1)", "f(secret=***, n=1)"),
            ("{'token': [('a', {'b': 'c]'}), \"d)\"], 'user': 7}", "{'token': ***, 'user': 7}"),
            ("f(card=Card('4111 1111', exp='12/29'), n=1)", "f(card=***, n=1)"),
            ("f(password=['a', 'b'", "f(password=***[''''"),   # never closed: hidden to the end, its quotes kept
            ("f(password=['a\\'] b', 'c'], n=1)", "f(password=***, n=1)")):
        assert masker.text(text) == masked, text
    job = Queue("q", connection=redis).enqueue("tests.jobs.record", "x", password=["pa", "ss"],
                                               secret=("one two", "x"), card={"k": "v"})
    fail(job)
    answers = [client.get(f"/rq/0/data/job/{job.id}.json").json["description"],
               client.get("/rq/0/data/jobs/q/failed/8/asc/1.json").json["jobs"][0]["description"]]
    for description in answers:
        assert description == "tests.jobs.record('x', card=***, password=***, secret=***)"


def push_cheaply(redis: Redis, queue: Queue, count: int) -> list[str]:
    """``count`` copies of one real job, queued and in the failed registry: ids and hashes pipelined."""
    fields = redis.hgetall(queue.enqueue("tests.jobs.record", "x").key)
    redis.delete(queue.key)
    ids = [f"{n:06d}-{'j' * 30}" for n in range(count)]
    with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hset(f"rq:job:{job_id}", mapping=fields)
        pipe.rpush(queue.key, *ids)
        pipe.zadd(queue.failed_job_registry.key, {job_id: n for n, job_id in enumerate(ids)})
        pipe.execute()
    return ids


def test_job_listings_do_one_page_of_work_however_long_the_queue(client: FlaskClient, redis: Redis) -> None:
    """100,000 jobs per page took 79 s and 23 MB; so did one job per page, descending, past the end
    (a range that wrapped to the whole list). Pages hold at most MAX_PAGE_SIZE jobs, each page
    reads only its own ids (bytes Redis sent) and jobs (HGETALL calls)."""
    from rqplus.dashboard.rqdashboard import MAX_PAGE_SIZE

    ids = push_cheaply(redis, Queue("big", connection=redis), 20_000)
    base = "/rq/0/data/jobs/big"
    for path, expected in ((f"{base}/queued/100000/asc/1.json", ids[:MAX_PAGE_SIZE]),
                           (f"{base}/failed/100000/asc/1.json", ids[:MAX_PAGE_SIZE]),
                           (f"{base}/queued/1/dsc/20003.json", []), (f"{base}/failed/1/dsc/20003.json", []),
                           (f"{base}/queued/1/asc/20003.json", []), (f"{base}/failed/7/dsc/2.json", ids[-14:-7][::-1]),
                           (f"{base}/queued/7/dsc/1.json", ids[-7:][::-1]), (f"{base}/queued/3/asc/2.json", ids[3:6])):
        before = redis.info("stats")["total_net_output_bytes"]
        redis.config_resetstat()
        answer = client.get(path)
        stats = redis.info("commandstats")
        sent = redis.info("stats")["total_net_output_bytes"]
        assert answer.status_code == 200, path
        assert [job["id"] for job in answer.json["jobs"]] == expected, path
        assert len(answer.data) < 2000 + 1000 * len(expected), path
        assert stats.get("cmdstat_hgetall", {}).get("calls", 0) <= len(expected), path
        # constant part: the lengths of the RQ list and the 10 backlog levels (count, then page)
        assert sum(stat["calls"] for stat in stats.values()) <= 45 + 2 * len(expected), path
        assert sent - before < 50_000 + 2000 * len(expected), path   # the whole id list is ~800 KB
    pagination = client.get(f"{base}/queued/100000/asc/3.json").json["pagination"]
    assert pagination["num_pages"] == 20_000 // MAX_PAGE_SIZE and pagination["current_page"] == 3


def test_odd_ids_and_numbers_answer_404_with_a_message(client: FlaskClient, redis: Redis) -> None:
    Queue("q", connection=redis).enqueue("tests.jobs.record", "x")
    huge = "99999999999999999999999"
    for path in ("/rq/0/data/job/a.b.json", "/rq/0/view/job/a.b", "/rq/0/view/job/%00", "/rq/0/view/job/%FF%FE",
                 "/rq/0/data/job/%00.json", "/rq/0/data/job/%FF%FE.json", "/rq/0/data/jobs/q/queued/%C2%B2/asc/1.json",
                 "/rq/0/data/jobs/q/queued/8/asc/%C2%B2.json", f"/rq/0/data/jobs/q/queued/8/asc/{huge}.json",
                 f"/rq/0/data/jobs/q/queued/{huge}/asc/1.json", f"/rq/0/data/jobs/q/failed/8/dsc/{huge}.json"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.json["status"] == "ERROR" and answer.json["message"], path
        page = client.get(path, headers={"Accept": "text/html"})
        assert page.status_code == 404 and "<html" in page.text.lower(), path
    for action in ("requeue", "delete"):
        answer = post(client, f"/rq/job/a.b/{action}")
        assert answer.status_code == 404 and "no job 'a.b'" in answer.json["message"], action
    answer = post(client, "/rq/queue/no-such-queue/compact")
    assert answer.status_code == 404 and "no queue 'no-such-queue'" in answer.json["message"]
    Queue("empty", connection=redis).enqueue("tests.jobs.record", "x")
    redis.delete("rq:queue:empty")                      # known, but its list is gone with its last job
    assert post(client, "/rq/queue/empty/compact").json == {"status": "OK"}


def test_only_an_unreachable_redis_answers_503(redis_factory, redis: Redis) -> None:
    server = redis_factory()
    app = create_app(server.url, credentials=Credentials(USER, PASSWORD), secret_key="test")
    client = logged_in(app)
    redis_of_app = server.client()
    redis_of_app.set("rq:queue:odd", "not a list")      # WRONGTYPE for every list command
    redis_of_app.sadd("rq:queues", "rq:queue:odd")
    answer = client.get("/rq/0/data/jobs/odd/queued/8/asc/1.json")
    assert answer.status_code == 409 and "WRONGTYPE" in answer.json["message"]
    server.stop()
    answer = client.get("/rq/0/data/queues.json")
    assert answer.status_code == 503 and "cannot be reached" in answer.json["message"]


def test_concurrent_wrong_guesses_get_exactly_the_limit_of_401s(app) -> None:
    """40 wrong guesses sent at once from one address got 12 answers of 401 before the 429s: each
    request checked the count, then added to it. Here the count each failure adds decides."""
    import http.cookiejar
    import threading
    import urllib.error
    import urllib.parse
    import urllib.request

    guesses = 48
    server = Server(app, "127.0.0.1", 0, threads=guesses)   # every guess served at once
    server.start()
    try:
        base = server.urls[0]
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(base + "login", timeout=10)   # a session and its CSRF token, for the form half
        token = next(cookie.value for cookie in jar if cookie.name == "_csrf_token")
        wrong = "Basic " + base64.b64encode(f"{USER}:guess".encode()).decode()
        start, statuses = threading.Barrier(guesses), []

        def guess(n: int) -> None:
            if n % 2:
                request = urllib.request.Request(base + "metrics", headers={"Authorization": wrong})
            else:
                request = urllib.request.Request(base + "login", method="POST", data=urllib.parse.urlencode(
                    {"username": USER, "password": f"guess {n}", "_csrf_token": token}).encode())
            start.wait()
            try:
                statuses.append(opener.open(request, timeout=30).status)
            except urllib.error.HTTPError as error:
                statuses.append(error.code)

        threads = [threading.Thread(target=guess, args=(n,)) for n in range(guesses)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        server.stop()
    assert sorted(statuses) == [401] * security.LOGIN_FAILURES_LIMIT + [429] * (guesses - security.LOGIN_FAILURES_LIMIT)


def test_a_queue_past_its_window_shows_its_true_count_and_lists_its_backlog_in_order(client: FlaskClient,
                                                                                   redis: Redis) -> None:
    from rqplus.scripts import WINDOW

    queue = Queue("big", connection=redis)
    jobs = queue.enqueue_many([Queue.prepare_data("tests.jobs.record", (str(n),), priority=9 - n % 10)
                               for n in range(WINDOW + 150)])
    order = queue.get_job_ids()
    assert sorted(order) == sorted(job.id for job in jobs) and redis.llen(queue.key) == WINDOW
    counts = {q["name"]: q["count"] for q in client.get("/rq/0/data/queues.json").json["queues"]}
    assert counts["big"] == WINDOW + 150
    page = client.get(f"/rq/0/data/jobs/big/queued/100/asc/{WINDOW // 100 + 1}.json").json
    assert [job["id"] for job in page["jobs"]] == order[WINDOW:WINDOW + 100]
    stats = {s.name: s for s in metrics.queue_stats(redis)}["big"]
    assert stats.complete and stats.depth == WINDOW + 150
    assert stats.by_priority == {p: (WINDOW + 150) // 10 for p in range(10)}
    assert 'rqplus_queue_jobs{queue="big",priority="9"} 115' in client.get("/metrics").text.splitlines()


def test_per_priority_counts_match_a_full_scan_after_concurrent_producers_workers_and_requeues(
        redis: Redis, redis_server: RedisServer, processes) -> None:
    """Two producer threads (some at_front), two workers on a backlog (a third of the jobs fail),
    a thread requeueing failed jobs, one worker SIGKILLed and its job rescued: when all stop, the
    counts (the window's recorded priorities plus the backlog lists) equal a job-by-job scan."""
    import random
    import threading

    from rqplus.scripts import WINDOW

    queue = Queue("mix", connection=redis)
    stop = threading.Event()

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        for n in range(WINDOW // 2 + 100):
            function = "tests.jobs.fail" if n % 3 == 0 else "tests.jobs.record"
            queue.enqueue(function, f"{seed}-{n}", priority=rng.randrange(10), at_front=rng.random() < 0.1)

    def requeue() -> None:
        while not stop.is_set():
            queue.requeue_failed_many(queue.failed_job_registry.get_job_ids(0, 99))
            time.sleep(0.05)

    threads = [threading.Thread(target=produce, args=(seed,)) for seed in (1, 2)] + [threading.Thread(target=requeue)]
    for thread in threads:
        thread.start()
    workers = [processes.rq_worker(redis_server.url, "mix", burst=False, extra=("--job-monitoring-interval", "2"))
               for _ in range(2)]
    wait_for(lambda: len(ran(redis)) >= 200, timeout=120)
    processes.kill_group(workers[0])
    for thread in threads[:2]:
        thread.join(120)
    stop.set()
    threads[2].join(30)
    processes.kill_group(workers[1], signal.SIGTERM)
    workers[1].wait(30)
    queue.requeue_failed_many(queue.failed_job_registry.get_job_ids())
    scanned: dict[int, int] = {}
    for job in queue.get_jobs():
        scanned[priority_of(job)] = scanned.get(priority_of(job), 0) + 1
    stats = {s.name: s for s in metrics.queue_stats(redis)}["mix"]
    assert stats.complete and stats.depth == sum(scanned.values()) > 0
    assert stats.by_priority == dict(sorted(scanned.items()))
