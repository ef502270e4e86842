"""rqplus/connections.py: URL choice, redaction, reachability (real servers, never port 6379)."""

import pytest
from redis.exceptions import AuthenticationError, ConnectionError

from rqplus.connections import answers_anonymously, connect, explain, is_reachable, redact, redis_url, shared
from rqplus.embedded import free_port
from tests.conftest import acl_password


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
    ("redis://db/0?username=u&pass%77ord=s3cret", "redis://db/0?username=u&pass%77ord=***"),  # redis-py decodes names
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


@pytest.fixture
def no_redis_env(monkeypatch):
    for name in ("REDIS_URL", "REDIS_USERNAME", "REDIS_PASSWORD", "REDIS_SSL_CA_CERTS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("url, env, expected", [
    ("redis://db:6379/0", {"REDIS_PASSWORD": "p@ss/w:rd"}, "redis://:p%40ss%2Fw%3Ard@db:6379/0"),
    ("redis://db:6379/0", {"REDIS_USERNAME": "rqplus-worker", "REDIS_PASSWORD": "pw"}, "redis://rqplus-worker:pw@db:6379/0"),
    ("redis://alice@db:6379/0", {"REDIS_USERNAME": "bob", "REDIS_PASSWORD": "pw"}, "redis://alice:pw@db:6379/0"),
    ("redis://alice:mine@db/0", {"REDIS_USERNAME": "bob", "REDIS_PASSWORD": "pw"}, "redis://alice:mine@db/0"),
    ("redis://db/0?password=mine", {"REDIS_PASSWORD": "pw"}, "redis://db/0?password=mine"),
    ("redis://db/0", {"REDIS_USERNAME": "bob"}, "redis://db/0"),  # a user alone: no password to give
    ("unix:///run/redis.sock?db=1", {"REDIS_PASSWORD": "pw"}, "unix://:pw@/run/redis.sock?db=1"),
    ("rediss://db:6380/0", {"REDIS_SSL_CA_CERTS": "/etc/ca b.pem"}, "rediss://db:6380/0?ssl_ca_certs=/etc/ca%20b.pem"),
    ("rediss://db/0?ssl_ca_certs=/own.pem", {"REDIS_SSL_CA_CERTS": "/env.pem"}, "rediss://db/0?ssl_ca_certs=/own.pem"),
    ("redis://db/0", {"REDIS_SSL_CA_CERTS": "/env.pem"}, "redis://db/0"),  # no TLS, no CA
    ("rediss://db/0?db=2", {"REDIS_SSL_CA_CERTS": "/env.pem", "REDIS_PASSWORD": "pw"},
     "rediss://:pw@db/0?db=2&ssl_ca_certs=/env.pem"),
])
def test_environment_credentials_and_ca_fill_in_what_the_url_lacks(no_redis_env, url, env, expected):
    for name, value in env.items():
        no_redis_env.setenv(name, value)
    assert redis_url(url) == expected
    assert not any(secret in redact(redis_url(url)) for secret in ("pw", "mine", "p%40ss"))


def test_connect_and_shared_sign_in_with_environment_credentials(acl_server, no_redis_env):
    no_redis_env.setenv("REDIS_URL", f"redis://127.0.0.1:{acl_server.port}/0")
    no_redis_env.setenv("REDIS_USERNAME", "rqplus-producer")
    no_redis_env.setenv("REDIS_PASSWORD", acl_password("producer"))  # "/", ":", "@", "%": quoted on the way
    assert connect().rpush("rqplus:events", "x") == 1
    assert shared().llen("rqplus:events") == 1
    assert "p@ss" not in redact(redis_url()) and redact(redis_url()).startswith("redis://rqplus-producer:***@")


def test_answers_anonymously_tells_an_open_server_from_a_closed_one(redis_server, redis_factory, acl_server):
    assert answers_anonymously(redis_server.client())
    assert not answers_anonymously(redis_factory(requirepass="right").client())
    assert not answers_anonymously(acl_server.client())  # `user default off`


def test_explain_says_how_to_give_the_ca_only_for_a_refused_certificate():
    assert "ssl_ca_certs" in explain(ConnectionError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"))
    assert explain(ConnectionError("Connection refused.\n")) == "Connection refused."


@pytest.mark.parametrize("url, message", [
    ("redis://", "names no host"),
    ("redis://:s3cret@:6379/0", "names no host"),
    ("rediss:///0", "names no host"),
    ("redis://db:6379/zero", "database 'zero' is not a number"),
    ("redis://db:6379/0?db=x", "database 'x' is not a number"),
    ("unix:///run/redis.sock?db=one", "database 'one' is not a number"),
    ("redis://db:port/0", "the port is not a number"),
    ("memcached://db:11211", "not a Redis URL"),
])
def test_a_url_without_a_host_or_with_a_non_numeric_port_or_db_is_refused(url, message):
    with pytest.raises(ValueError, match=message) as err:
        redis_url(url)
    assert "s3cret" not in str(err.value)
