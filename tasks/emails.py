"""Emails: one message per job over SMTP, retried with backoff on transient failures only.

:func:`send_email` (the seed's job function) validates its input, sends with :mod:`smtplib` and
returns the message's Message-ID. What a retry could fix (connection refused, a timeout, a
dropped connection, a 4xx reply) raises :class:`TransientEmailError` and RQ retries it with the
job's ``Retry``; everything else (a malformed address, a 5xx reply, bad configuration) fails the
job at once, with the reason (for a 5xx, the server's reply) in ``exc_info``. After the last retry
the job is FAILED with the last reason: never dropped silently.

:func:`send_email` declares its jobs' defaults with ``rqplus.task``: the ``emails`` queue,
priority 3 and a jittered exponential ``Retry`` drawn per job (:func:`retry_policy`), so any
enqueue of it gets them (``Queue("emails").enqueue(send_email, ...)``, ``send_email.delay(...)``).
:func:`enqueue_email` validates first (nothing is written for bad input), then enqueues it.
Configuration is read from the environment at call time (:class:`SmtpSettings`,
:class:`RetrySettings`, through :mod:`tasks.settings`).

Usage::

    from tasks.emails import enqueue_email
    job = enqueue_email("user@example.com", "Welcome!", "Thanks for signing up.")

and a worker: ``rq worker -w rqplus.Worker --queue-class rqplus.Queue --with-scheduler emails``.
"""

from __future__ import annotations

import random
import re
import smtplib
import ssl
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from redis import Redis
from rq import Retry, get_current_job
from rq.exceptions import DuplicateJobError
from rq.timeouts import JobTimeoutException
from rq.job import Job

from rqplus import Queue, task
from rqplus.connections import shared
from rqplus.retry import stop_retries
from tasks.settings import Variables, flag, from_env, number, tcp_port, text, whole

#: The queue email jobs go to by default (``send_email.delay``, :func:`enqueue_email`).
QUEUE = "emails"
#: Transactional mail goes ahead of default-priority (5) work, behind the most urgent (0-2).
DEFAULT_EMAIL_PRIORITY = 3

#: Backoff factor between retries, and the jitter applied to each interval (a fraction).
RETRY_FACTOR = 2
RETRY_JITTER = 0.2
#: Hosts a password may be sent to without STARTTLS: it never leaves the machine.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_NAME_AND_ADDRESS = re.compile(r"(?P<name>[^<>\"\r\n]*?)\s*<(?P<address>[^<>]*)>")


class InvalidEmailError(ValueError):
    """An address, subject or body that no SMTP server would take: final, never retried."""


class TransientEmailError(Exception):
    """A failure the next attempt may not meet again (unreachable server, timeout, 4xx reply): retried."""


class PermanentEmailError(Exception):
    """The server refused for good (a 5xx reply, no STARTTLS when required): final, never retried."""


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send, from the ``SMTP_*`` environment variables (``SMTP_VARIABLES``).

    Raises ``ValueError`` naming the variable for a value that cannot be used, and when a
    password would cross the network in clear text (a username without STARTTLS to a host
    other than loopback).

    Usage: ``SmtpSettings.from_env().port  # -> 25``
    """

    host: str = "localhost"
    port: int = 25
    username: str = ""  # with a password: log in (after STARTTLS when that is on)
    password: str = ""
    starttls: bool = False  # True: STARTTLS with certificate checks, or fail (never falls back to clear text)
    sender: Address = field(default_factory=lambda: Address(addr_spec="noreply@localhost.localdomain"))
    timeout: float = 10  # seconds per connect / command; a timeout is a transient failure

    @classmethod
    def from_env(cls) -> SmtpSettings:
        settings = from_env(cls, SMTP_VARIABLES)
        if bool(settings.username) != bool(settings.password):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD: set both to log in, or neither")
        if settings.username and not settings.starttls and settings.host.lower() not in LOOPBACK_HOSTS:
            raise ValueError(f"SMTP_USERNAME is set but SMTP_STARTTLS is off: the password would reach "
                             f"{settings.host} in clear text; set SMTP_STARTTLS=true")
        return settings


@dataclass(frozen=True)
class RetrySettings:
    """How often and how soon a failed email is retried (``EMAIL_RETRY_*``, read by producers).

    Usage: ``RetrySettings.from_env().max  # -> 5``
    """

    max: int = 5  # retries after the first attempt; 0 disables them
    base: float = 10  # seconds before the first retry, doubled per retry, +-20 % jitter

    @classmethod
    def from_env(cls) -> RetrySettings:
        return from_env(cls, RETRY_VARIABLES)


def parse_address(value: str) -> Address:
    """``value`` as one address, ``user@example.com`` or ``Ada <ada@example.com>``.

    Raises ``InvalidEmailError`` saying what is wrong: not exactly one address, a malformed local
    part, a domain that is not a dotted host name (IDN domains are accepted, in their ASCII form),
    or a length over the SMTP limits. ``TypeError`` if ``value`` is not a str.

    Usage: ``parse_address("Ada <ada@example.com>").addr_spec  # -> "ada@example.com"``
    """
    if not isinstance(value, str):
        raise TypeError(f"an email address must be a str, not {type(value).__name__}")
    text = value.strip()
    named = _NAME_AND_ADDRESS.fullmatch(text)
    name, spec = (named["name"], named["address"].strip()) if named else ("", text)
    local, at, domain = spec.rpartition("@")

    def invalid(reason: str) -> InvalidEmailError:
        return InvalidEmailError(f"{value!r} is not a valid email address: {reason}")

    if not at or not local:
        raise invalid("expected one address, like user@example.com")
    if not _LOCAL_PART.fullmatch(local) or len(local) > 64:
        raise invalid(f"the part before @ ({local!r}) is not a plain mailbox name of at most 64 characters")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise invalid(f"the domain {domain!r} is not a valid host name") from None
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise invalid(f"the domain {domain!r} is not a dotted host name like example.com")
    if len(local) + 1 + len(domain) > 254:
        raise invalid("longer than 254 characters")
    return Address(display_name=name.strip(), username=local, domain=domain)


#: Each setting: its environment variable and how its text is read.
SMTP_VARIABLES: Variables = {
    "host": ("SMTP_HOST", text),
    "port": ("SMTP_PORT", tcp_port),
    "username": ("SMTP_USERNAME", text),
    "password": ("SMTP_PASSWORD", str),
    "starttls": ("SMTP_STARTTLS", flag),
    "sender": ("SMTP_FROM", parse_address),
    "timeout": ("SMTP_TIMEOUT", number(0.001)),
}
RETRY_VARIABLES: Variables = {
    "max": ("EMAIL_RETRY_MAX", whole(0)),
    "base": ("EMAIL_RETRY_BASE", number(0)),
}


def _checked(recipient: str, subject: str, body: str) -> Address:
    for name, value in (("subject", subject), ("body", body)):
        if not isinstance(value, str):
            raise TypeError(f"the email {name} must be a str, not {type(value).__name__}")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidEmailError(f"the email {name} is not valid Unicode text (a lone surrogate)") from None
    if subject.splitlines() not in ([subject], []):  # any line break Python's email package knows
        raise InvalidEmailError(f"the subject {subject!r} contains a line break")
    return parse_address(recipient)


def retry_policy() -> Retry | None:
    """The ``Retry`` for one email job: ``EMAIL_RETRY_MAX`` retries, jittered exponential intervals.

    Interval n (from 0) is ``EMAIL_RETRY_BASE * 2**n`` seconds times a random factor in 0.8-1.2,
    in whole seconds (RQ's scheduler counts in seconds), at least 1 unless the base is 0 (retry at
    once). Drawn per job at enqueue time, so emails that failed together (an SMTP outage) come back
    spread out rather than all at once. None when ``EMAIL_RETRY_MAX`` is 0.

    Usage: ``retry_policy()  # -> Retry(max=5, interval=[9, 22, 38, 83, 157])`` (defaults)
    """
    settings = RetrySettings.from_env()
    if not settings.max:
        return None
    intervals = [settings.base * RETRY_FACTOR ** n * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
                 for n in range(settings.max)]
    return Retry(max=settings.max, interval=[max(1, round(s)) if settings.base else 0 for s in intervals])


def enqueue_email(recipient: str, subject: str, body: str, *, priority: int | None = None,
                  connection: Redis | None = None, queue: str = QUEUE, job_id: str | None = None) -> Job:
    """Validate, then enqueue :func:`send_email` on ``queue`` with its declared defaults (a
    :func:`retry_policy` retry, priority ``DEFAULT_EMAIL_PRIORITY``, 3, unless ``priority`` is given).

    ``connection`` defaults to ``rqplus.connections.shared()`` (``REDIS_URL``). A malformed
    address or subject raises ``InvalidEmailError`` (a ``ValueError``), a non-str ``TypeError``,
    before anything is written.
    With ``job_id``, enqueueing is idempotent: while a job of that id exists, it is returned and
    nothing new is enqueued (for messages a re-run job must not send twice, e.g. receipts).
    Workers need ``--with-scheduler`` for the retry intervals to fall due.

    Usage: ``enqueue_email("user@example.com", "Welcome!", "Thanks for signing up.", priority=0)``
    """
    _checked(recipient, subject, body)
    emails = Queue(queue, connection=connection or shared())
    try:
        return emails.enqueue(send_email, recipient, subject, body, priority=priority, job_id=job_id,
                              unique=job_id is not None)
    except DuplicateJobError:
        existing = emails.fetch_job(job_id)
        if existing is None:  # it expired between the check and this fetch: enqueue it after all
            return enqueue_email(recipient, subject, body, priority=priority, connection=emails.connection,
                                 queue=queue, job_id=job_id)
        return existing


def _message(recipient: Address, subject: str, body: str, sender: Address, job: Job | None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    # one Message-ID per job, the same on every retry: a receiver can drop a duplicate sent after
    # a reply was lost on the way back
    message["Message-ID"] = f"<{job.id}@{sender.domain}>" if job else make_msgid(domain=sender.domain)
    message.set_content(body)
    return message


def _deliver(message: EmailMessage, recipient: Address, settings: SmtpSettings) -> None:
    smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
    try:
        if settings.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.username:  # with a password, over TLS or to loopback (SmtpSettings.from_env)
            smtp.login(settings.username, settings.password)
        smtp.send_message(message, settings.sender.addr_spec, [recipient.addr_spec])
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            # the message was accepted or the real error is already raised: QUIT's fate changes
            # nothing, and a retry for it would send the message twice
            smtp.close()


def _classified(error: smtplib.SMTPException | OSError, settings: SmtpSettings) -> Exception:
    """``error`` as a ``TransientEmailError`` or a ``PermanentEmailError`` carrying the server's reply."""
    server = f"SMTP server {settings.host}:{settings.port}"
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        code, reply = next(iter(error.recipients.values()))
    else:
        code, reply = getattr(error, "smtp_code", None), getattr(error, "smtp_error", b"")
    if code is None:
        # SMTPException is an OSError too: of those without a reply code, only a dropped
        # connection is worth another attempt (not, say, STARTTLS missing); nor is a certificate
        # that does not verify, which the next attempt meets again
        if isinstance(error, ssl.SSLCertVerificationError):
            return PermanentEmailError(f"{server}: its TLS certificate does not verify: {error}")
        if isinstance(error, smtplib.SMTPServerDisconnected) or not isinstance(error, smtplib.SMTPException):
            return TransientEmailError(f"{server} unreachable: {type(error).__name__}: {error}")
        return PermanentEmailError(f"{server}: {type(error).__name__}: {error}")
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    if 400 <= code < 500:
        return TransientEmailError(f"{server} answered {code} {text} (temporary, will retry)")
    return PermanentEmailError(f"{server} refused the message: {code} {text}")


@task(queue=QUEUE, priority=DEFAULT_EMAIL_PRIORITY, retry=retry_policy)
def send_email(recipient: str, subject: str, body: str) -> str:
    """The email job: send ``body`` to ``recipient`` through ``SMTP_HOST``; returns the Message-ID.

    Its jobs go to the ``emails`` queue (``send_email.delay``) at priority 3 with a
    :func:`retry_policy` retry, however they are enqueued, unless the caller gives its own.
    Raises ``TransientEmailError`` for what a retry may fix (RQ retries it per the job's
    ``Retry``). Any other error (``InvalidEmailError``, ``PermanentEmailError`` with the server's
    5xx reply, a bad ``SMTP_*`` setting) also tells RQ not to retry this job: it fails at once.

    Usage: ``Queue("emails", connection=redis).enqueue(send_email, "a@example.com", "Hi", "Hello")``
    """
    job = get_current_job()
    try:
        settings = SmtpSettings.from_env()
        address = _checked(recipient, subject, body)
        message = _message(address, subject, body, settings.sender, job)
        try:
            _deliver(message, address, settings)
        except (smtplib.SMTPException, OSError) as error:
            raise _classified(error, settings) from error
    except (TransientEmailError, JobTimeoutException):  # a slow server may be quicker next time
        raise
    except Exception:
        stop_retries(job)  # the same attempt would fail the same way
        raise
    return message["Message-ID"]
