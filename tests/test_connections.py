"""rqplus/connections.py: URL choice, redaction, reachability (real servers, never port 6379)."""

import pytest
from redis.exceptions import AuthenticationError

from rqplus.connections import connect, is_reachable, redact, redis_url, shared
from rqplus.embedded import free_port


def test_explicit_url_then_env_then_default(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert redis_url() == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("REDIS_URL", "rediss://cache.example:6380/2")
    assert redis_url() == "rediss://cache.example:6380/2"
    assert redis_url("redis://127.0.0.1:7000/1") == "redis://127.0.0.1:7000/1"


def test_non_redis_url_is_refused_without_showing_the_password():
    with pytest.raises(ValueError, match="not a Redis URL") as err:
        redis_url("http://user:hunter2@host/")
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@db:6379/0", "redis://:***@db:6379/0"),
    ("rediss://alice:s3cret@db:6380/1", "rediss://alice:***@db:6380/1"),
    ("redis://db:6379/0", "redis://db:6379/0"),
    ("redis://db:6379/0?password=s3cret&socket_timeout=5", "redis://db:6379/0?password=***&socket_timeout=5"),
    ("rediss://u:s3cret@db/0?ssl_cert_reqs=none&Password=s3cret", "rediss://u:***@db/0?ssl_cert_reqs=none&Password=***"),
    ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1&password=***"),
])
def test_redact_hides_passwords_only(url, shown):
    assert redact(url) == shown


def test_reachability_of_a_private_server_and_of_a_free_port(redis_server):
    assert is_reachable(redis_server.url)
    assert connect(redis_server.url).ping()
    assert not is_reachable(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)


def test_wrong_password_is_an_error_not_unreachable(redis_factory):
    server = redis_factory(requirepass="right")
    assert is_reachable(f"redis://:right@127.0.0.1:{server.port}/0")
    with pytest.raises(AuthenticationError):
        is_reachable(f"redis://:wrong@127.0.0.1:{server.port}/0")


def test_shared_is_one_client_per_url_and_follows_redis_url(redis_server, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    first = shared()
    assert shared() is first and shared(redis_server.url) is first
    assert first.ping()
    other = redis_server.url.rsplit("/", 1)[0] + "/3"
    monkeypatch.setenv("REDIS_URL", other)
    assert shared() is not first and shared().connection_pool.connection_kwargs["db"] == 3
