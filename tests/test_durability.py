"""rqplus/durability.py against real redis-servers of each kind, plus the judging rules on raw facts."""

from __future__ import annotations

import pytest
from redis import Redis

from rqplus.durability import UNKNOWN, _beyond_loopback, cached_check, check, judge, require_durable
from rqplus.embedded import DURABLE_CONFIG
from rqplus.exceptions import DurabilityError


def test_durable_server_passes(redis_factory):
    report = check(redis_factory(**DURABLE_CONFIG).client())
    assert report.ok, report
    assert report.problems == [] and report.warnings == []
    assert report.facts["aof_enabled"] is True
    assert report.facts["appendfsync"] == "everysec"
    assert report.facts["maxmemory_policy"] == "noeviction"
    assert report.facts["role"] == "master"


def test_aof_off_is_not_durable_and_says_how_to_fix(redis_factory):
    report = check(redis_factory(appendonly="no").client())
    assert not report.ok
    assert any("AOF is off" in p and "appendonly yes" in p for p in report.problems)


def test_allkeys_policy_is_a_problem_and_volatile_a_warning(redis_factory):
    lru = check(redis_factory(appendonly="yes", maxmemory_policy="allkeys-lru").client())
    assert not lru.ok and "noeviction" in lru.problems[0]
    volatile = check(redis_factory(appendonly="yes", maxmemory_policy="volatile-ttl").client())
    assert volatile.ok
    assert any("result_ttl" in w for w in volatile.warnings)


def test_renamed_config_falls_back_to_info_and_never_claims_fsync(redis_factory):
    server = redis_factory(appendonly="yes", maxmemory_policy="allkeys-random", rename_command=("CONFIG", ""))
    report = check(server.client())
    assert report.facts["config_readable"] is False
    assert report.facts["appendfsync"] == UNKNOWN
    assert report.facts["aof_enabled"] is True
    assert report.facts["maxmemory_policy"] == "allkeys-random"  # from INFO memory
    assert any("appendfsync cannot be read" in w for w in report.warnings)
    assert len(report.problems) == 1  # the eviction policy; unknown fsync alone does not fail


def test_unknown_fsync_alone_does_not_fail(redis_factory):
    report = check(redis_factory(appendonly="yes", rename_command=("CONFIG", "")).client())
    assert report.ok, report


def test_appendfsync_no_is_a_warning(redis_factory):
    report = check(redis_factory(appendonly="yes", appendfsync="no").client())
    assert report.ok and any("appendfsync no" in w for w in report.warnings)


def test_read_only_replica_is_not_durable_target(redis_factory):
    primary = redis_factory(**DURABLE_CONFIG)
    replica = redis_factory(appendonly="yes", replicaof=("127.0.0.1", primary.port))
    report = check(replica.client())
    assert report.facts["role"] == "slave"
    assert any("read-only replica" in p for p in report.problems)


def healthy_facts(**overrides):
    """Facts of a durable Redis 7, with ``overrides``."""
    return {"server": "redis", "version": "7.0.15", "role": "master", "loading": False, "aof_enabled": True,
            "appendfsync": "everysec", "aof_use_rdb_preamble": "yes", "maxmemory_policy": "noeviction",
            "aof_last_write_status": "ok", "aof_last_bgrewrite_status": "ok", "rdb_last_bgsave_status": "ok",
            **overrides}


@pytest.mark.parametrize("server, version, outcome", [
    ("redis", "4.0.14", "problem"), ("redis", "6.0.9", "warning"), ("redis", "6.2.0", "ok"),
    ("valkey", "7.0.0", "problem"), ("valkey", "7.2.5", "ok"), ("valkey", "8.0.1", "ok"),
])
def test_version_rules(server, version, outcome):
    report = judge(healthy_facts(server=server, version=version))
    assert report.ok == (outcome != "problem")
    assert bool(report.warnings) == (outcome == "warning")
    if outcome == "warning":
        assert "LMOVE" in report.warnings[0]


def test_failed_persistence_statuses_are_problems():
    report = judge(healthy_facts(aof_last_write_status="err", rdb_last_bgsave_status="err"))
    assert len(report.problems) == 2
    assert "last AOF write failed" in report.problems[0]


def test_cached_check_reuses_a_fresh_report_per_connection_pool(redis_factory):
    client = redis_factory(appendonly="no").client()
    first = cached_check(client)
    assert cached_check(client) is first
    client.config_set("appendonly", "yes")
    fresh = cached_check(client, max_age=0)
    assert fresh is not first and fresh.ok


def test_require_durable_raises_with_every_problem(redis_factory):
    client = redis_factory(appendonly="no", maxmemory_policy="allkeys-lru").client()
    with pytest.raises(DurabilityError) as err:
        require_durable(client)
    assert len(err.value.problems) == 2


# --- exposure: what `rqplus check` adds (warnings only, never a problem) -------------------------

#: A bind beyond loopback that binds nothing: "-" makes an address optional, and 192.0.2.1 (TEST-NET-1)
#: is on no interface here, so the server really listens on 127.0.0.1 only.
BEYOND_LOOPBACK = ("127.0.0.1", "-192.0.2.1")
NO_PASSWORD = "without a password"


def test_no_password_beyond_loopback_is_a_warning(redis_factory):
    report = check(redis_factory(bind=BEYOND_LOOPBACK, **DURABLE_CONFIG).client(), exposure=True)
    assert report.ok and report.problems == []
    assert report.facts["beyond_loopback"] is True and report.facts["password_required"] is False
    assert [w for w in report.warnings if NO_PASSWORD in w and "bind 127.0.0.1 -192.0.2.1" in w and "users.acl" in w]


def test_a_password_or_loopback_only_needs_no_warning(redis_factory):
    protected = check(redis_factory(bind=BEYOND_LOOPBACK, requirepass="pw", **DURABLE_CONFIG).client(), exposure=True)
    loopback = check(redis_factory(**DURABLE_CONFIG).client(), exposure=True)
    assert protected.facts["password_required"] is True and loopback.facts["beyond_loopback"] is False
    assert protected.warnings == [] and loopback.warnings == [] and protected.ok and loopback.ok


def test_acl_users_with_the_default_user_off_need_no_warning(acl_server):
    report = check(acl_server.client(), exposure=True)
    assert report.facts["password_required"] is True and report.warnings == []


def test_protected_mode_off_is_a_warning(redis_factory):
    report = check(redis_factory(protected_mode="no", **DURABLE_CONFIG).client())
    assert report.ok and report.facts["protected_mode"] == "no"
    assert [w for w in report.warnings if w.startswith("protected-mode is off") and "`protected-mode yes`" in w]


def test_exposure_without_config_is_judged_from_the_address_reached(redis_factory):
    report = check(redis_factory(rename_command=("CONFIG", ""), **DURABLE_CONFIG).client(), exposure=True)
    assert report.facts["bind"] == report.facts["protected_mode"] == report.facts["beyond_loopback"] == UNKNOWN
    assert report.facts["password_required"] is False and not [w for w in report.warnings if NO_PASSWORD in w]
    # reached at a non-loopback address (only a client's settings: this test binds loopback only)
    assert _beyond_loopback(Redis(host="redis.internal"), UNKNOWN) is True
    assert _beyond_loopback(Redis(host="::1"), UNKNOWN) == _beyond_loopback(Redis(host="localhost"), UNKNOWN) == UNKNOWN
