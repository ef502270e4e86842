"""Everything about reaching Redis: which URL, how to connect, how to show a URL safely.

No other rqplus module reads ``REDIS_URL`` or parses a Redis URL.

Usage::

    from rqplus.connections import connect, redis_url, redact, shared
    redis = connect()                 # REDIS_URL, else redis://127.0.0.1:6379/0
    shared().ping()                   # the same, one client per process and URL
    print(redact(redis_url()))        # redis://:***@host:6379/0 — never the password
"""

from __future__ import annotations

import functools
import os
import re
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.exceptions import AuthenticationError, ConnectionError, TimeoutError

from rqplus.defaults import DEFAULT_REDIS_URL

#: redis-py's ``?password=...`` query parameter (any case), value up to the next ``&``.
_PASSWORD_PARAMETER = re.compile(r"(?i)((?:^|&)password=)[^&]*")

#: Environment variable naming the Redis to use, as RQ's own CLI accepts it.
REDIS_URL_ENV = "REDIS_URL"
_SCHEMES = ("redis", "rediss", "unix")


def redis_url(url: str | None = None) -> str:
    """The Redis URL to use: ``url`` if given, else ``$REDIS_URL``, else the local default.

    Raises ``ValueError`` for a URL whose scheme Redis does not speak.

    Usage: ``redis_url()  # -> 'redis://127.0.0.1:6379/0'``
    """
    chosen = url or os.environ.get(REDIS_URL_ENV) or DEFAULT_REDIS_URL
    scheme = urlsplit(chosen).scheme
    if scheme not in _SCHEMES:
        raise ValueError(f"{redact(chosen)} is not a Redis URL: expected one of {', '.join(s + '://' for s in _SCHEMES)}")
    return chosen


def url_is_configured() -> bool:
    """True when the user chose a Redis through ``$REDIS_URL``."""
    return bool(os.environ.get(REDIS_URL_ENV))


def connect(url: str | None = None, **options) -> Redis:
    """A Redis client for ``redis_url(url)``; extra keyword options go to ``Redis.from_url``.

    Usage: ``connect("redis://127.0.0.1:6380/0").ping()``
    """
    return Redis.from_url(redis_url(url), **options)


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
    return base + mark + _PASSWORD_PARAMETER.sub(r"\1***", query)


def is_reachable(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis answers PING at ``url`` within ``timeout`` seconds.

    A server that answers but refuses our credentials raises ``AuthenticationError``: that is a
    configuration mistake to report, not a reason to start another Redis.

    Usage: ``is_reachable("redis://127.0.0.1:6379/0")``
    """
    # one attempt: redis-py's default retries would stretch `timeout` into seconds of backoff
    client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except AuthenticationError:
        raise
    except (ConnectionError, TimeoutError):
        return False
    finally:
        client.close()
