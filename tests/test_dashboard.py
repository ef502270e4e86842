"""The dashboard without a browser: Flask's test client against a real Redis (conftest's private server).

Covers authentication, CSRF and same-origin checks, clean 404/409 answers, priority-keeping
requeue, forged payloads never unpickled, masking, metrics, the audit log and the CLI's refusals.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from redis import Redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.serializers import JSONSerializer
from rq_scheduler import Scheduler

from rqplus import Queue
from rqplus.cli import main
from rqplus.dashboard import Credentials, DashboardConfigError, audit, create_app
from rqplus.dashboard.payloads import Masker, SafeSerializer, Withheld, withheld_in
from rqplus.embedded import RedisServer

USER, PASSWORD = "admin", "correct horse battery staple"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


@pytest.fixture
def app(redis: Redis, redis_server: RedisServer):
    return create_app(redis_server.url, credentials=Credentials(USER, PASSWORD), secret_key="test")


@pytest.fixture
def client(app) -> FlaskClient:
    """A client logged in through the form, holding the session's CSRF token in ``client.token``."""
    client = app.test_client()
    client.get("/login")
    token = client.get_cookie("_csrf_token").value
    answer = client.post("/login", data={"username": USER, "password": PASSWORD, "_csrf_token": token})
    assert answer.status_code == 302
    client.get("/")  # the login started a fresh session: fetch its token
    client.token = client.get_cookie("_csrf_token").value
    return client


def post(client: FlaskClient, path: str, **kwargs):
    headers = {"X-CSRFToken": client.token, "Origin": "http://localhost", **kwargs.pop("headers", {})}
    return client.post(path, headers=headers, **kwargs)


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


def test_cli_refuses_without_credentials_and_no_auth_off_loopback(monkeypatch, redis_server: RedisServer) -> None:
    monkeypatch.delenv("RQPLUS_DASHBOARD_USERNAME", raising=False)
    monkeypatch.delenv("RQPLUS_DASHBOARD_PASSWORD", raising=False)
    result = CliRunner().invoke(main, ["dashboard", "--url", redis_server.url, "--port", "0"])
    assert result.exit_code == 2 and "RQPLUS_DASHBOARD_PASSWORD" in result.output
    result = CliRunner().invoke(main, ["dashboard", "--no-auth", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "loopback" in result.output


def test_every_route_refuses_requests_without_credentials(app) -> None:
    client = app.test_client()
    for rule in app.url_map.iter_rules():
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<int:{arg}>", "0").replace(f"<path:{arg}>", "x").replace(f"<{arg}>", "x")
        for method in rule.methods - {"HEAD"}:
            for accept in ("application/json", "text/html"):
                answer = client.open(path, method=method, headers={"Accept": accept})
                if rule.endpoint == "auth.login" and method in ("GET", "OPTIONS"):  # the one open page
                    assert answer.status_code == 200
                elif method == "GET" and accept == "text/html":
                    assert answer.status_code == 302 and answer.location.startswith("/login"), (method, path)
                else:
                    assert answer.status_code in (401, 403), (method, path, answer.status_code)


def test_basic_auth_for_scripts_and_wrong_passwords(app) -> None:
    client = app.test_client()
    assert client.get("/metrics", headers=BASIC).status_code == 200
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:nope".encode()).decode()}
    answer = client.get("/metrics", headers=wrong)
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Basic")


def test_login_form_and_no_open_redirect(app) -> None:
    client = app.test_client()
    client.get("/login")
    token = client.get_cookie("_csrf_token").value
    wrong = client.post("/login", data={"username": USER, "password": "x", "_csrf_token": token})
    assert wrong.status_code == 401 and b"Wrong user name or password" in wrong.data
    answer = client.post("/login", data={"username": USER, "password": PASSWORD, "_csrf_token": token,
                                         "next": "//evil.example/"})
    assert answer.status_code == 302 and answer.location == "/"
    assert client.get_cookie("_csrf_token").value != token  # a fresh session after login


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
    assert answer.json == {"status": "OK", "count": 2}
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


def test_bulk_requeue_by_function_and_exception_with_count_first(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    records = [queue.enqueue("tests.jobs.record", str(n), priority=n) for n in range(3)]
    other = queue.enqueue("tests.jobs.fail", "other")
    for job in records:
        fail(job)
    fail(other, "Traceback ...\nRuntimeError: other")
    page = client.get("/failed?function=tests.jobs.record&exception=ValueError")
    assert b'<strong id="match-count">3</strong>' in page.data
    form = {"function": "tests.jobs.record", "exception": "ValueError"}
    stale = post(client, "/failed/requeue", data={**form, "expected": "2"})
    assert stale.status_code == 409 and queue.count == 0
    assert post(client, "/failed/requeue", data={**form, "expected": "3"}).status_code == 302
    assert queue.get_job_ids() == [job.id for job in records]
    assert FailedJobRegistry("q", connection=redis).get_job_ids() == [other.id]
    assert audit.entries(redis)[0]["count"] == 3


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


def test_safe_serializer_reads_plain_data_and_withholds_the_rest() -> None:
    when = datetime(2025, 1, 2, tzinfo=timezone.utc)
    plain = {"a": [1, 2.5, "x", None, True], "when": when, "tags": {"x"}, "span": timedelta(seconds=3)}
    assert SafeSerializer.loads(pickle.dumps(plain)) == plain
    assert SafeSerializer.loads(JSONSerializer.dumps({"a": 1})) == {"a": 1}
    loaded = SafeSerializer.loads(pickle.dumps({"path": Path("/tmp")}))
    assert isinstance(loaded["path"], Withheld) and withheld_in(loaded) == ["pathlib.PosixPath"]


def test_masking_in_text_and_data(monkeypatch) -> None:
    masker = Masker()
    assert masker.text("charge(7, card='4111 1111', user_password=\"p w\", note='ok')") == \
        "charge(7, card='***', user_password=\"***\", note='ok')"
    assert masker.text("https://x/cb?api_token=abc&page=2") == "https://x/cb?api_token=***&page=2"
    assert masker.data({"user": 1, "IBAN": "DE89", "nested": [{"cvv": 123}]}) == \
        {"user": 1, "IBAN": "***", "nested": [{"cvv": "***"}]}
    monkeypatch.setenv("RQPLUS_DASHBOARD_MASK_KEYS", "pin")
    assert Masker().data({"pin": 1, "password": "shown"}) == {"pin": "***", "password": "shown"}


def test_secrets_are_masked_on_every_page(client: FlaskClient, redis: Redis) -> None:
    queue = Queue("q", connection=redis)
    job = queue.enqueue("tests.jobs.record", "order 42", card="4111 1111 1111 1111",
                        meta={"api_token": "tok-123", "customer": {"iban": "DE8937040044"}})
    fail(job)
    pages = [f"/rq/0/data/job/{job.id}.json", "/rq/0/data/jobs/q/failed/8/asc/1.json"]
    bodies = b"".join(client.get(path).data for path in pages)
    assert b"order 42" in bodies and b"***" in bodies
    assert b"4111" not in bodies and b"tok-123" not in bodies and b"DE8937" not in bodies


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
