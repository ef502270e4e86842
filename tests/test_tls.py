"""TLS (``rediss://``) end to end against a real TLS-only redis-server (conftest's ``tls_server``, its
certificate signed by a throw-away CA): producer, ``rq worker``, dashboard and ``rqplus check``;
certificates are verified, and one from a CA we were not given is refused."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from redis.exceptions import ConnectionError

from rqplus import Queue
from rqplus.connections import connect
from rqplus.dashboard import Credentials, create_app
from rqplus.stack import Stack, why_not_redis
from tests.conftest import ROOT, Processes, TlsRedisServer, doc_examples, run_shell, subprocess_env, wait_for

VERIFY_FAILED = "certificate verify failed"


def check(**env: str) -> subprocess.CompletedProcess:
    """``rqplus check`` with ``env`` (its Redis from ``$REDIS_URL``)."""
    return subprocess.run([sys.executable, "-m", "rqplus.cli", "check"], env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=30)


def test_producer_worker_dashboard_and_check_over_tls(tls_server: TlsRedisServer, processes: Processes):
    url = f"{tls_server.url}?ssl_ca_certs={tls_server.ca}"
    job = Queue("tls", connection=connect(url)).enqueue("tasks.demo.work", 0, "over TLS", priority=1)
    worker = processes.rq_worker(url, "tls")  # plain `rq worker --url rediss://...?ssl_ca_certs=...`
    assert worker.wait(60) == 0, processes.output(worker)
    assert job.get_status(refresh=True) == "finished" and job.return_value() == "over TLS"

    client = create_app(url, credentials=Credentials("ops", "pw"), secret_key="test").test_client()
    auth = {"Authorization": "Basic b3BzOnB3"}  # ops:pw
    assert client.get("/", headers=auth).status_code == 200
    assert "tls" in client.get("/rq/0/data/queues.json", headers=auth).text
    assert 'rqplus_queue_depth{queue="tls"} 0' in client.get("/metrics", headers=auth).text

    done = check(REDIS_URL=url)
    assert done.returncode == 0 and done.stdout.startswith(f"durable: yes - {url} "), done.stdout + done.stderr


def test_the_ca_can_come_from_the_environment(tls_server: TlsRedisServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REDIS_SSL_CA_CERTS", str(tls_server.ca))
    monkeypatch.setenv("REDIS_URL", tls_server.url)
    assert connect().ping()
    done = check(REDIS_URL=tls_server.url, REDIS_SSL_CA_CERTS=str(tls_server.ca))
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_certificate_from_another_ca_is_refused_everywhere(tls_server: TlsRedisServer, tls_files,
                                                             processes: Processes):
    unknown = f"{tls_server.url}?ssl_ca_certs={tls_files['unknown_ca']}"
    with pytest.raises(ConnectionError, match=VERIFY_FAILED):
        connect(unknown).ping()
    done = check(REDIS_URL=unknown)
    assert done.returncode == 2 and VERIFY_FAILED in done.stderr and "rqplus check: error: cannot reach" in done.stderr
    # no CA at all: redis-py verifies against the system's CAs, which do not know ours
    worker = processes.rq_worker(tls_server.url, "tls")
    assert worker.wait(60) != 0 and VERIFY_FAILED in processes.output(worker)


def test_rqplus_up_gives_its_workers_the_ca_from_the_environment(tls_server: TlsRedisServer, tmp_path,
                                                                monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REDIS_URL", tls_server.url)
    monkeypatch.setenv("REDIS_SSL_CA_CERTS", str(tls_server.ca))
    with Stack(["tls-up"], workers=1, out=io.StringIO()) as stack:
        job = Queue("tls-up", connection=stack.connection()).enqueue("tasks.demo.work", 0, "up")
        wait_for(lambda: job.get_status(refresh=True) == "finished")


def test_rqplus_up_says_the_certificate_was_refused_and_how_to_give_the_ca(tls_server: TlsRedisServer, tls_files):
    why = why_not_redis(f"{tls_server.url}?ssl_ca_certs={tls_files['unknown_ca']}")
    assert why.startswith("its certificate was refused") and VERIFY_FAILED in why and "REDIS_SSL_CA_CERTS" in why


def test_the_documented_tls_examples_work(tls_server: TlsRedisServer, tmp_path):
    worker, check = doc_examples(ROOT / "docs" / "security.md", "TLS")
    here = {"redis.internal:6380": f"127.0.0.1:{tls_server.port}", "/etc/rqplus/ca.pem": str(tls_server.ca)}
    job = Queue("default", connection=tls_server.client()).enqueue("tasks.demo.work", 0, "documented")
    run_shell(worker.strip() + " --burst", here, cwd=tmp_path)
    assert job.get_status(refresh=True) == "finished"
    assert run_shell(check, here, cwd=tmp_path).startswith("durable: yes - rediss://127.0.0.1:")
