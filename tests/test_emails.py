"""tasks.emails against a real SMTP server (aiosmtpd, in this process) and real workers.

The server's handler (``Mailbox``) keeps every delivered message and answers scripted refusals
per recipient (a 4xx a given number of times, a 5xx for good), so each failure path is a real
SMTP conversation. Jobs run through ``rq worker`` subprocesses and an in-process
``rqplus.Worker``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from redis import Redis
from rq import Retry
from rq.job import Job

import rqplus
from rqplus.embedded import free_port
from tasks.emails import (DEFAULT_EMAIL_PRIORITY, InvalidEmailError, PermanentEmailError, SmtpSettings,
                          TransientEmailError, enqueue_email, parse_address, retry_policy, send_email)
from tests.conftest import wait_for

RECIPIENT = "ada@example.com"
SENDER = "Shop <shop@example.com>"


class Mailbox:
    """aiosmtpd handler: keeps delivered messages, counts RCPT attempts, refuses as scripted."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.attempts: Counter[str] = Counter()
        self._refusals: dict[tuple[str, str], list] = {}  # (recipient, stage) -> [reply, times left or None]

    def refuse(self, recipient: str, reply: str, times: int | None = None, stage: str = "RCPT") -> None:
        """Answer ``reply`` at ``stage`` (RCPT or DATA) for ``recipient``, ``times`` times (None: always)."""
        self._refusals[recipient, stage] = [reply, times]

    def _refusal(self, recipient: str, stage: str) -> str | None:
        scripted = self._refusals.get((recipient, stage))
        if scripted is None or scripted[1] == 0:
            return None
        if scripted[1] is not None:
            scripted[1] -= 1
        return scripted[0]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.attempts[address] += 1
        refusal = self._refusal(address, "RCPT")
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        refusal = self._refusal(envelope.rcpt_tos[0], "DATA")
        if refusal:
            return refusal
        # as a receiving MTA stores it: line ends back to \n
        self.messages.append(message_from_bytes(envelope.content.replace(b"\r\n", b"\n"), policy=policy.default))
        return "250 Message accepted for delivery"


class SmtpServer:
    """A real SMTP server on 127.0.0.1 in this process; ``start``/``stop`` simulate an outage."""

    def __init__(self, port: int, **options) -> None:
        self.port, self.mailbox, self.options = port, Mailbox(), options
        self.controller: Controller | None = None

    def start(self) -> SmtpServer:
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port, **self.options)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def env(self) -> dict[str, str]:
        """The environment a sender of this server needs (retries at once by default: fast tests)."""
        return {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(self.port), "SMTP_FROM": SENDER,
                "SMTP_TIMEOUT": "5", "EMAIL_RETRY_MAX": "2", "EMAIL_RETRY_BASE": "0"}


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """A running SMTP server; its settings are in this process's environment (and so its children's)."""
    server = SmtpServer(free_port()).start()
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    yield server
    server.stop()


def work(redis: Redis, *queues: str) -> None:
    """Run every queued job in this process with rqplus.Worker (it forks a work-horse per job)."""
    rqplus.Worker(list(queues or ("emails",)), connection=redis).work(burst=True)


def exc_text(job: Job) -> str:
    job.refresh()
    return job.latest_result().exc_string


def nothing_pending(redis: Redis, job: Job) -> bool:
    """The job is in no queue and not scheduled for a retry."""
    queue = rqplus.Queue("emails", connection=redis)
    return job.id not in queue.get_job_ids() and job.id not in queue.scheduled_job_registry.get_job_ids()


# ---------------------------------------------------------------- delivery


def test_a_worker_subprocess_delivers_the_message_and_returns_its_message_id(smtp, redis, redis_server, processes):
    job = enqueue_email(RECIPIENT, "Welcome!", "Thanks for signing up.", connection=redis)
    assert rqplus.priority_of(job) == DEFAULT_EMAIL_PRIORITY == 3

    worker = processes.rq_worker(redis_server.url, "emails", env=smtp.env)
    output = processes.finish(worker, timeout=30)

    assert job.get_status(refresh=True) == "finished", output
    [message] = smtp.mailbox.messages
    assert message["To"] == RECIPIENT
    assert message["From"] == SENDER
    assert message["Subject"] == "Welcome!"
    assert message.get_content() == "Thanks for signing up.\n"
    assert job.return_value() == message["Message-ID"] == f"<{job.id}@example.com>"


def test_display_names_and_unicode_survive_and_the_priority_is_the_callers(smtp, redis):
    job = enqueue_email("Zoë Ünal <zoe@example.com>", "Grüße ✓", "Ça marche.\nLine two.", priority=0,
                        connection=redis)
    assert rqplus.priority_of(job) == 0
    work(redis)

    [message] = smtp.mailbox.messages
    assert str(message["To"]) == "Zoë Ünal <zoe@example.com>"
    assert message["Subject"] == "Grüße ✓"
    assert message.get_content() == "Ça marche.\nLine two.\n"


def test_an_email_with_a_job_id_is_enqueued_and_sent_once(smtp, redis):
    first = enqueue_email(RECIPIENT, "Receipt", "Paid.", connection=redis, job_id="receipt-42")
    again = enqueue_email(RECIPIENT, "Receipt", "Paid.", connection=redis, job_id="receipt-42")
    assert first.id == again.id == "receipt-42"
    assert rqplus.Queue("emails", connection=redis).get_job_ids() == ["receipt-42"]
    work(redis)
    assert enqueue_email(RECIPIENT, "Receipt", "Paid.", connection=redis, job_id="receipt-42").is_finished
    work(redis)
    assert [m["Subject"] for m in smtp.mailbox.messages] == ["Receipt"]


def test_send_email_called_directly_sends_and_returns_a_fresh_message_id(smtp):
    first, second = send_email(RECIPIENT, "a", "b"), send_email(RECIPIENT, "a", "b")
    assert first != second and first.endswith("@example.com>")
    assert [m["Message-ID"] for m in smtp.mailbox.messages] == [first, second]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_login_with_smtp_username_and_password(redis, monkeypatch):
    def authenticate(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=isinstance(auth_data, LoginPassword) and auth_data == (b"shop", b"s3cret pass"),
                          handled=False)  # False: aiosmtpd sends the 535 reply

    server = SmtpServer(free_port(), authenticator=authenticate, auth_required=True, auth_require_tls=False).start()
    try:
        for name, value in {**server.env, "SMTP_USERNAME": "shop", "SMTP_PASSWORD": "s3cret pass"}.items():
            monkeypatch.setenv(name, value)
        assert send_email(RECIPIENT, "signed in", "ok")
        monkeypatch.setenv("SMTP_PASSWORD", "wrong")
        with pytest.raises(PermanentEmailError, match="535"):
            send_email(RECIPIENT, "refused", "no")
    finally:
        server.stop()
    assert [m["Subject"] for m in server.mailbox.messages] == ["signed in"]


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize("recipient", [
    "not-an-address", "user@", "@example.com", "a b@example.com", "user@example", "user@exa_mple.com",
    "a@example.com, b@example.com", "Ada <ada@example.com", "user..dots@example.com",
    "user@example.com\r\nBcc: x@y.com",
    "user@-example.com", "user@1.2.3.4", "x" * 65 + "@example.com", "",
])
def test_a_malformed_address_is_refused_at_enqueue_and_nothing_is_written(redis, recipient):
    with pytest.raises(InvalidEmailError, match="is not a valid email address"):
        enqueue_email(recipient, "Welcome!", "Hello", connection=redis)
    assert redis.keys("*") == []


@pytest.mark.parametrize("subject", ["Hi\nBcc: x@example.com", "Hi\r", "Hi\x0bthere", "Hi\x0c", "Hi\x1cthere",
                                     "Hi\x85there", "Hi\u2028there", "Hi\u2029"])
def test_a_line_break_of_any_kind_in_the_subject_is_refused_at_enqueue(redis, subject):
    with pytest.raises(InvalidEmailError, match="line break"):
        enqueue_email(RECIPIENT, subject, "Hello", connection=redis)
    assert redis.keys("*") == []


def test_other_bad_input_is_refused_at_enqueue(redis):
    with pytest.raises(InvalidEmailError, match="subject is not valid Unicode"):
        enqueue_email(RECIPIENT, "Hi \ud800", "Hello", connection=redis)
    with pytest.raises(InvalidEmailError, match="body is not valid Unicode"):
        enqueue_email(RECIPIENT, "Hi", "Hello \udc80", connection=redis)
    with pytest.raises(TypeError, match="body must be a str"):
        enqueue_email(RECIPIENT, "Hi", b"bytes", connection=redis)
    with pytest.raises(TypeError, match="address must be a str"):
        enqueue_email(None, "Hi", "Hello", connection=redis)
    assert redis.keys("*") == []


def test_parse_address_keeps_display_name_and_encodes_idn_domains():
    assert parse_address("  Ada Lovelace <ada@example.com> ").display_name == "Ada Lovelace"
    assert parse_address("ada+tag@münchen.de").addr_spec == "ada+tag@xn--mnchen-3ya.de"


def test_a_malformed_address_enqueued_directly_fails_at_once_without_retry(smtp, redis):
    queue = rqplus.Queue("emails", connection=redis)
    job = queue.enqueue(send_email, "bad@@example.com", "Hi", "Hello", retry=Retry(max=3))

    work(redis)

    assert job.get_status(refresh=True) == "failed"
    assert "InvalidEmailError: 'bad@@example.com' is not a valid email address" in exc_text(job)
    assert nothing_pending(redis, job)
    assert not smtp.mailbox.attempts and not smtp.mailbox.messages


# ---------------------------------------------------------------- refusals, outages


@pytest.mark.parametrize("stage, reply", [("RCPT", "550 5.1.1 <ada@example.com>: mailbox unknown"),
                                          ("DATA", "554 5.7.1 Message rejected as spam")])
def test_a_5xx_reply_fails_at_once_with_the_servers_reply(smtp, redis, redis_server, processes, stage, reply):
    smtp.mailbox.refuse(RECIPIENT, reply, stage=stage)
    job = enqueue_email(RECIPIENT, "Welcome!", "Hello", connection=redis)  # EMAIL_RETRY_MAX=2: retries on
    assert job.retries_left == 2

    output = processes.finish(processes.rq_worker(redis_server.url, "emails", env=smtp.env), timeout=30)

    assert job.get_status(refresh=True) == "failed", output
    assert f"PermanentEmailError: SMTP server 127.0.0.1:{smtp.port} refused the message: {reply}" in exc_text(job)
    assert smtp.mailbox.attempts[RECIPIENT] == 1  # one attempt, no retry
    assert nothing_pending(redis, job) and not smtp.mailbox.messages


def test_a_4xx_reply_is_retried_and_the_message_delivered_once_the_server_accepts(smtp, redis):
    smtp.mailbox.refuse(RECIPIENT, "451 4.3.0 Mailbox busy, try later", times=2)
    job = enqueue_email(RECIPIENT, "Welcome!", "Hello", connection=redis)  # 2 retries, at once (base 0)

    work(redis)

    assert job.get_status(refresh=True) == "finished"
    assert smtp.mailbox.attempts[RECIPIENT] == 3
    [message] = smtp.mailbox.messages
    assert job.return_value() == message["Message-ID"]


def test_a_4xx_reply_every_time_fails_after_the_last_retry_with_the_reason(smtp, redis):
    smtp.mailbox.refuse(RECIPIENT, "452 4.2.2 Mailbox full")
    job = enqueue_email(RECIPIENT, "Welcome!", "Hello", connection=redis)

    work(redis)

    assert job.get_status(refresh=True) == "failed"
    assert smtp.mailbox.attempts[RECIPIENT] == 3  # the first attempt and 2 retries
    assert (f"TransientEmailError: SMTP server 127.0.0.1:{smtp.port} answered 452 4.2.2 Mailbox full"
            in exc_text(job))
    assert nothing_pending(redis, job)
    assert job.id in rqplus.Queue("emails", connection=redis).failed_job_registry.get_job_ids()


def test_an_unreachable_server_fails_after_the_last_retry_with_the_reason(redis, monkeypatch):
    monkeypatch.setenv("SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SMTP_PORT", str(free_port()))  # nothing listens there
    monkeypatch.setenv("EMAIL_RETRY_MAX", "1")
    monkeypatch.setenv("EMAIL_RETRY_BASE", "0")
    job = enqueue_email(RECIPIENT, "Welcome!", "Hello", connection=redis)

    work(redis)

    assert job.get_status(refresh=True) == "failed"
    assert "unreachable: ConnectionRefusedError" in exc_text(job)
    assert nothing_pending(redis, job)


def test_connection_refused_is_retried_with_backoff_until_the_server_comes_up(redis, redis_server, processes):
    server = SmtpServer(free_port())  # not started yet: connections are refused
    env = {**server.env, "EMAIL_RETRY_MAX": "3", "EMAIL_RETRY_BASE": "1"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        job = enqueue_email(RECIPIENT, "Welcome!", "Hello", connection=redis)
    assert job.retries_left == 3 and job.retry_intervals[:2] == [1, 2] and 3 <= job.retry_intervals[2] <= 5

    processes.rq_worker(redis_server.url, "emails", burst=False, extra=("--with-scheduler",), env=env)
    scheduled = rqplus.Queue("emails", connection=redis).scheduled_job_registry
    wait_for(lambda: job.id in scheduled.get_job_ids(), timeout=20)  # attempt 1 refused: waits ~1 s
    server.start()
    try:
        wait_for(lambda: job.get_status(refresh=True) == "finished", timeout=20)
    finally:
        server.stop()
    assert [m["To"] for m in server.mailbox.messages] == [RECIPIENT]
    assert job.return_value() == server.mailbox.messages[0]["Message-ID"]


def test_a_server_that_never_answers_times_out_as_a_transient_failure(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never greets
        for name, value in {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(silent.getsockname()[1]),
                            "SMTP_TIMEOUT": "0.3"}.items():
            monkeypatch.setenv(name, value)
        started = time.monotonic()
        with pytest.raises(TransientEmailError, match="unreachable: .*timed out"):
            send_email(RECIPIENT, "Hi", "Hello")
    assert time.monotonic() - started < 3


def test_starttls_required_but_not_offered_fails_at_once_and_sends_nothing_in_clear(smtp, redis, monkeypatch):
    monkeypatch.setenv("SMTP_STARTTLS", "true")
    job = enqueue_email(RECIPIENT, "Welcome!", "Hello", connection=redis)

    work(redis)

    assert job.get_status(refresh=True) == "failed"
    assert "PermanentEmailError" in exc_text(job) and "STARTTLS" in exc_text(job)
    assert not smtp.mailbox.attempts and not smtp.mailbox.messages


@pytest.fixture
def self_signed(tmp_path) -> ssl.SSLContext:
    """A server-side TLS context with a certificate no client trusts."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_a_certificate_that_does_not_verify_fails_at_once_and_sends_nothing(redis, monkeypatch, self_signed):
    server = SmtpServer(free_port(), tls_context=self_signed).start()
    try:
        for name, value in {**server.env, "SMTP_STARTTLS": "true"}.items():
            monkeypatch.setenv(name, value)
        job = enqueue_email(RECIPIENT, "Welcome!", "Hello", connection=redis)
        work(redis)
    finally:
        server.stop()
    assert "PermanentEmailError" in exc_text(job) and "certificate does not verify" in exc_text(job)
    assert job.get_status() == "failed" and len(job.results()) == 1, "one attempt, no retry"
    assert not server.mailbox.attempts and not server.mailbox.messages


class StallingMailbox(Mailbox):
    """Takes 3 s to answer DATA: longer than the job may run."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(3)
        return await super().handle_DATA(server, session, envelope)


def test_a_job_timeout_is_transient_and_retried(redis, monkeypatch):
    server = SmtpServer(free_port())
    server.mailbox = StallingMailbox()
    server.start()
    try:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        job = rqplus.Queue("emails", connection=redis).enqueue(send_email, RECIPIENT, "Slow", "Hello", job_timeout=1,
                                                               retry=Retry(max=1))
        work(redis)
    finally:
        server.stop()
    assert server.mailbox.attempts[RECIPIENT] == 2, "timed out once, retried once"
    assert job.get_status(refresh=True) == "failed" and "JobTimeoutException" in exc_text(job)


def test_a_bad_setting_fails_the_job_at_once_naming_the_variable(smtp, redis, monkeypatch):
    job = enqueue_email(RECIPIENT, "Welcome!", "Hello", connection=redis)
    monkeypatch.setenv("SMTP_PORT", "smtp")  # read by the worker at run time, not at enqueue

    work(redis)

    assert job.get_status(refresh=True) == "failed"
    assert "ValueError: SMTP_PORT='smtp': expected a whole number >= 1" in exc_text(job)
    assert nothing_pending(redis, job)


# ---------------------------------------------------------------- retry policy, settings


def test_retry_intervals_grow_exponentially_with_jitter(monkeypatch):
    monkeypatch.setenv("EMAIL_RETRY_MAX", "5")
    monkeypatch.setenv("EMAIL_RETRY_BASE", "10")
    drawn = [retry_policy().intervals for _ in range(50)]
    for intervals in drawn:
        assert all(8 * 2 ** n <= s <= 12 * 2 ** n for n, s in enumerate(intervals)), intervals
    assert len({tuple(i) for i in drawn}) > 1  # jittered per job
    assert retry_policy().max == 5

    monkeypatch.setenv("EMAIL_RETRY_BASE", "0")
    assert retry_policy().intervals == [0] * 5  # retry at once
    monkeypatch.setenv("EMAIL_RETRY_MAX", "0")
    assert retry_policy() is None


@pytest.mark.parametrize("name, value", [("EMAIL_RETRY_MAX", "-1"), ("EMAIL_RETRY_MAX", "2.5"),
                                         ("EMAIL_RETRY_MAX", "inf"),
                                         ("EMAIL_RETRY_BASE", "soon"), ("EMAIL_RETRY_BASE", "nan")])
def test_a_bad_retry_setting_is_refused_at_enqueue(redis, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        enqueue_email(RECIPIENT, "Hi", "Hello", connection=redis)
    assert redis.keys("*") == []


def test_settings_are_read_at_call_time(monkeypatch):
    for name in ("SMTP_HOST", "SMTP_PORT", "SMTP_FROM", "SMTP_STARTTLS", "SMTP_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    defaults = SmtpSettings.from_env()
    assert (defaults.host, defaults.port, defaults.starttls, defaults.username) == ("localhost", 25, False, "")
    monkeypatch.setenv("SMTP_PORT", "2525")
    monkeypatch.setenv("SMTP_STARTTLS", "yes")
    assert (SmtpSettings.from_env().port, SmtpSettings.from_env().starttls) == (2525, True)
    monkeypatch.setenv("SMTP_FROM", "nobody")
    with pytest.raises(ValueError, match="SMTP_FROM='nobody': 'nobody' is not a valid email address"):
        SmtpSettings.from_env()
    monkeypatch.setenv("SMTP_PORT", "70000")
    with pytest.raises(ValueError, match="SMTP_PORT='70000': expected a TCP port"):
        SmtpSettings.from_env()


def test_a_password_is_never_sent_in_clear_text_beyond_loopback(monkeypatch):
    monkeypatch.setenv("SMTP_USERNAME", "shop")
    monkeypatch.setenv("SMTP_PASSWORD", "s3cret")
    for host in ("localhost", "127.0.0.1", "::1"):
        monkeypatch.setenv("SMTP_HOST", host)
        assert SmtpSettings.from_env().username == "shop"
    monkeypatch.setenv("SMTP_HOST", "smtp.example.com")
    with pytest.raises(ValueError, match="password would reach smtp.example.com in clear text"):
        SmtpSettings.from_env()
    monkeypatch.setenv("SMTP_STARTTLS", "true")
    assert SmtpSettings.from_env().starttls
    monkeypatch.delenv("SMTP_PASSWORD")
    with pytest.raises(ValueError, match="set both to log in, or neither"):
        SmtpSettings.from_env()

