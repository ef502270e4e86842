"""Everything about reaching Redis: which URL, with which credentials and CA, how to connect, how
to show a URL safely.

No other rqplus module reads ``REDIS_URL``, ``REDIS_USERNAME``, ``REDIS_PASSWORD`` or
``REDIS_SSL_CA_CERTS``, or parses a Redis URL.

Usage::

    from rqplus.connections import connect, redis_url, redact, shared
    redis = connect()                 # REDIS_URL, else redis://127.0.0.1:6379/0
    shared().ping()                   # the same, one client per process and URL
    print(redact(redis_url()))        # redis://:***@host:6379/0 — never the password
"""

from __future__ import annotations

import functools
import os
from typing import Any
from urllib.parse import SplitResult, parse_qs, quote, unquote, unquote_plus, urlsplit, urlunsplit

from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError, TimeoutError

from rqplus.defaults import DEFAULT_REDIS_URL
from rqplus.functions import FunctionsRedis


#: Environment variable naming the Redis to use, as RQ's own CLI accepts it.
REDIS_URL_ENV = "REDIS_URL"
#: Environment variables with the Redis ACL user and its password, used when the URL names none.
REDIS_USERNAME_ENV = "REDIS_USERNAME"
REDIS_PASSWORD_ENV = "REDIS_PASSWORD"
#: Environment variable with the CA file (PEM) that verifies a ``rediss://`` server, used when the
#: URL has no ``ssl_ca_certs`` query parameter (redis-py's own, which plain ``rq worker --url`` reads).
REDIS_SSL_CA_CERTS_ENV = "REDIS_SSL_CA_CERTS"
_SCHEMES = ("redis", "rediss", "unix")
#: What OpenSSL's message says when the server's certificate chain does not verify.
_CERTIFICATE_FAILED = "certificate verify failed"


def redis_url(url: str | None = None) -> str:
    """The Redis URL to use: ``url`` if given, else ``$REDIS_URL``, else the local default; with
    ``$REDIS_PASSWORD`` (and ``$REDIS_USERNAME``, unless the URL names a user) when it has no
    password, and for ``rediss://`` with ``$REDIS_SSL_CA_CERTS`` as ``ssl_ca_certs`` when it
    names no CA.

    The result may hold a password: show it only through :func:`redact`. Raises ``ValueError``
    for a URL whose scheme Redis does not speak.

    Usage: ``redis_url()  # -> 'redis://127.0.0.1:6379/0'``
    """
    chosen = url or os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL
    parts = urlsplit(chosen)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"{redact(chosen)} is not a Redis URL: expected one of {', '.join(s + '://' for s in _SCHEMES)}")
    query = parse_qs(parts.query)
    _check_location(redact(chosen), parts, query)
    password = os.environ.get(REDIS_PASSWORD_ENV)
    if password and parts.password is None and "password" not in query:
        username = parts.username or ("" if "username" in query else os.environ.get(REDIS_USERNAME_ENV, ""))
        userinfo = f"{quote(unquote(username), safe='')}:{quote(password, safe='')}"
        chosen = urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc.rpartition('@')[2]}"))
    ca_file = os.environ.get(REDIS_SSL_CA_CERTS_ENV)
    if parts.scheme == "rediss" and ca_file and "ssl_ca_certs" not in query:
        chosen += f"{'&' if parts.query else '?'}ssl_ca_certs={quote(ca_file)}"
    return chosen


def _check_location(shown: str, parts: SplitResult, query: dict[str, list[str]]) -> None:
    """Refuse a URL without a host (redis-py would silently use localhost), or with a port or
    database that is not a number; ``shown`` is the URL as an error may show it (redacted)."""
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"{shown} names no host: write one, e.g. redis://127.0.0.1:6379/0")
    try:
        parts.port  # noqa: B018 -- urllib checks the port when it is read
    except ValueError:
        raise ValueError(f"{shown}: the port is not a number") from None
    databases = query.get("db", []) + ([parts.path.strip("/")] if parts.scheme != "unix" else [])
    for db in databases:
        if db and not db.isdigit():
            raise ValueError(f"{shown}: database {db!r} is not a number (redis://host:6379/0 selects database 0)")


def url_is_configured() -> bool:
    """True when the user chose a Redis through ``$REDIS_URL``."""
    return bool(os.environ.get(REDIS_URL_ENV))


def connect(url: str | None = None, **options) -> Redis:
    """A Redis client for ``redis_url(url)``; extra keyword options go to ``Redis.from_url``. It runs
    RQ's scripts as functions of rqplus's library (``rqplus.functions.FunctionsRedis``).

    Usage: ``connect("redis://127.0.0.1:6380/0").ping()``
    """
    return FunctionsRedis.from_url(redis_url(url), **options)


def shared(url: str | None = None) -> Redis:
    """The process' one client for ``redis_url(url)`` (its pool reused), for producer helpers called
    per request: a new client per call would cost a TCP connect per call. ``REDIS_URL`` is read at
    each call. redis-py pools are fork-safe.

    Usage: ``shared().rpush("key", "value")``
    """
    return _shared(redis_url(url))


@functools.lru_cache(maxsize=16)
def _shared(url: str) -> Redis:
    return connect(url)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, before the ``@`` or as redis-py's
    ``?password=`` query parameter (user names are kept), safe to print or log.

    Usage: ``redact("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"``
    """
    parts = urlsplit(url)
    if parts.password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        url = urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"))
    base, mark, query = url.partition("?")  # not urlunsplit: it drops the // of unix:///path
    return base + mark + "&".join(_redacted_parameter(parameter) for parameter in query.split("&")) if mark else base


def _redacted_parameter(parameter: str) -> str:
    # the name as redis-py reads it (parse_qs: percent-decoded, '+' a space): ?pass%77ord= too
    name, equals, _ = parameter.partition("=")
    return f"{name}=***" if equals and unquote_plus(name).strip().lower() == "password" else parameter


def explain(error: Exception) -> str:
    """``error`` as one line; for a server certificate that did not verify, with how to give the CA.

    Usage: ``print(f"cannot reach Redis: {explain(error)}")``
    """
    text = " ".join(str(error).split()) or type(error).__name__
    if _CERTIFICATE_FAILED in text:
        text += (f" (for a certificate of your own CA, give its PEM file: ?ssl_ca_certs=/path/ca.pem in the URL, "
                 f"or ${REDIS_SSL_CA_CERTS_ENV})")
    return text


def is_reachable(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis answers PING at ``url`` within ``timeout`` seconds.

    A server that answers but refuses our credentials raises ``AuthenticationError``, one whose TLS
    certificate does not verify ``ConnectionError``: configuration mistakes to report, not reasons
    to start another Redis.

    Usage: ``is_reachable("redis://127.0.0.1:6379/0")``
    """
    client = connect(url, **one_attempt(timeout))
    try:
        return bool(client.ping())
    except AuthenticationError:
        raise
    except (ConnectionError, TimeoutError) as error:
        if _CERTIFICATE_FAILED in str(error):
            raise
        return False
    finally:
        client.close()


def answers_anonymously(connection: Redis, timeout: float = 2.0) -> bool:
    """True if the server behind ``connection`` runs PING for a client that gives no credentials,
    i.e. its ``default`` user is on with ``nopass`` (and may ping). Asks on a new connection.

    Raises redis-py's ``ConnectionError`` when the server cannot be reached.

    Usage: ``answers_anonymously(redis)  # -> False behind ACLs with `user default off```
    """
    pool = connection.connection_pool
    options = {k: v for k, v in pool.connection_kwargs.items() if k not in ("username", "password", "credential_provider")}
    client = Redis(connection_pool=ConnectionPool(pool.connection_class, **{**options, **one_attempt(timeout)}))
    try:
        return bool(client.ping())
    except (AuthenticationError, ResponseError):  # NOAUTH, or NOPERM: the default user may not even ping
        return False
    finally:
        client.close()


def one_attempt(timeout: float) -> dict[str, Any]:
    """Client options for one quick try: redis-py's default retries would stretch ``timeout``
    into seconds of backoff.

    Usage: ``connect(url, **one_attempt(2.0)).ping()``
    """
    return {"socket_connect_timeout": timeout, "socket_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
