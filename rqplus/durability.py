"""Is this Redis safe for queues? The durability guard of rqplus.

A Redis is *durable* for rqplus when an acknowledged enqueue survives a Redis crash or restart
and is never evicted: AOF on, no eviction of queue keys, persistence healthy, a writable primary,
and a version that has what RQ's reliable fetch needs.

Usage::

    from rqplus.durability import check
    report = check(redis)
    if not report.ok:
        print(report)          # each problem with the redis.conf line that fixes it
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any
from weakref import WeakKeyDictionary

from redis import ConnectionPool, Redis
from redis.exceptions import ResponseError

from rqplus.connections import answers_anonymously
from rqplus.exceptions import DurabilityError

UNKNOWN = "unknown"

#: Keys RQ writes with a TTL, i.e. what a ``volatile-*`` eviction policy may drop under memory pressure.
RQ_KEYS_WITH_TTL = (
    "finished and failed job hashes (result_ttl / failure_ttl), results, worker heartbeat keys "
    "and jobs enqueued with ttl="
)


@dataclass
class DurabilityReport:
    """What :func:`check` found: ``ok`` is False when any ``problems`` exist.

    ``facts`` holds the raw readings: ``aof_enabled``, ``appendfsync``, ``aof_use_rdb_preamble``,
    ``maxmemory_policy``, ``aof_last_write_status``, ``aof_last_bgrewrite_status``,
    ``rdb_last_bgsave_status``, ``loading``, ``role``, ``server`` (redis/valkey), ``version``,
    ``config_readable``, ``bind``, ``protected_mode`` (and, from ``check(..., exposure=True)``,
    ``beyond_loopback``, ``password_required``). A value that could not be read is ``"unknown"``.
    """

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [f"durable: {'yes' if self.ok else 'NO'}"]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  {name}: {value}" for name, value in self.facts.items()]
        return "\n".join(lines)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def _read_config(connection: Redis) -> dict[str, str] | None:
    """CONFIG GET of the settings that matter, or None where CONFIG is renamed or forbidden."""
    try:
        config = connection.config_get("*")
    except ResponseError:  # unknown command (renamed) or NOPERM (ACL / managed Redis)
        return None
    return {key: config.get(key, UNKNOWN) for key in ("appendonly", "appendfsync", "aof-use-rdb-preamble",
                                                      "maxmemory-policy", "bind", "protected-mode")}


def _is_loopback(address: str) -> bool:
    """True for a loopback IP address or ``localhost``; False for anything else (``*``, a name)."""
    try:
        return ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address == "localhost"


def _beyond_loopback(connection: Redis, bind: str) -> bool | str:
    """Whether the server listens on more than loopback: from its ``bind`` (each address, ``-`` marking
    an optional one), else (CONFIG unreadable, and INFO does not show ``bind``) True when this client
    reached it at a non-loopback address, else ``"unknown"``."""
    if bind != UNKNOWN:
        return not all(_is_loopback(address.lstrip("-")) for address in bind.split())
    host = connection.connection_pool.connection_kwargs.get("host")  # None: a unix socket
    return True if host and not _is_loopback(host) else UNKNOWN


def read_facts(connection: Redis) -> dict[str, Any]:
    """The raw durability facts of a server: CONFIG where allowed, INFO otherwise (and for statuses).

    Usage: ``read_facts(redis)["maxmemory_policy"]``
    """
    info = connection.info()  # server, persistence, memory and replication sections in one call
    config = _read_config(connection)
    server = "valkey" if info.get("server_name") == "valkey" or "valkey_version" in info else "redis"
    facts: dict[str, Any] = {
        "server": server,
        "version": str(info.get("valkey_version") if server == "valkey" else info.get("redis_version", UNKNOWN)),
        "role": info.get("role", UNKNOWN),
        "loading": bool(info.get("loading", 0)),
        "config_readable": config is not None,
        "aof_enabled": (config["appendonly"] == "yes") if config else bool(info.get("aof_enabled", 0)),
        "appendfsync": config["appendfsync"] if config else UNKNOWN,
        "aof_use_rdb_preamble": config["aof-use-rdb-preamble"] if config else UNKNOWN,
        "maxmemory_policy": config["maxmemory-policy"] if config else info.get("maxmemory_policy", UNKNOWN),
        "bind": config["bind"] if config else UNKNOWN,
        "protected_mode": config["protected-mode"] if config else UNKNOWN,
    }
    for status in ("aof_last_write_status", "aof_last_bgrewrite_status", "rdb_last_bgsave_status"):
        facts[status] = info.get(status, UNKNOWN)
    return facts


def judge(facts: dict[str, Any]) -> DurabilityReport:
    """Turn facts into problems (not durable) and warnings (durable, but know this).

    Usage: ``judge(read_facts(redis)).ok``
    """
    report = DurabilityReport(facts=facts)
    problem, warn = report.problems.append, report.warnings.append

    if not facts["aof_enabled"]:
        problem("AOF is off: queued jobs since the last snapshot are lost when Redis restarts or crashes. "
                "Fix: `appendonly yes` in redis.conf (or CONFIG SET appendonly yes)")
    policy = facts["maxmemory_policy"]
    if policy.startswith("allkeys-"):
        problem(f"maxmemory-policy {policy} lets Redis silently evict queued job hashes when memory is full. "
                "Fix: `maxmemory-policy noeviction` (enqueue then fails loudly with OOM instead)")
    elif policy.startswith("volatile-"):
        warn(f"maxmemory-policy {policy} can evict RQ keys that carry a TTL: {RQ_KEYS_WITH_TTL}. "
             "Queued jobs are safe. `maxmemory-policy noeviction` keeps everything")
    elif policy == UNKNOWN:
        warn("maxmemory-policy is unknown here (neither CONFIG nor INFO shows it): make sure it is noeviction")

    for status, what in (("aof_last_write_status", "the last AOF write"),
                         ("aof_last_bgrewrite_status", "the last AOF rewrite"),
                         ("rdb_last_bgsave_status", "the last RDB save")):
        if facts[status] not in ("ok", UNKNOWN):
            problem(f"{what} failed ({status}:{facts[status]}): Redis may refuse or lose writes. "
                    "Fix the disk (space, permissions of `dir`) and check the Redis log")

    if facts["role"] in ("slave", "replica"):
        problem("this Redis is a read-only replica: enqueues fail with READONLY and its data follows the "
                "primary. Fix: point REDIS_URL at the primary")
    if facts["loading"]:
        warn("Redis is still loading its dataset: commands answer LOADING until it is done")

    version = _version(facts["version"])
    if facts["server"] == "valkey" and version < (7, 2):
        problem(f"Valkey {facts['version']} is older than 7.2, the oldest rqplus supports. Fix: upgrade Valkey")
    elif facts["server"] == "redis" and version < (5,):
        problem(f"Redis {facts['version']} is older than 5, the oldest rqplus supports. Fix: upgrade Redis")
    elif facts["server"] == "redis" and version < (6, 2):
        warn(f"Redis {facts['version']} has no LMOVE (6.2+): RQ's reliable fetch degrades to LPOP, so a "
             "worker killed mid-fetch can lose a job. Upgrade to Redis 6.2+")

    if facts.get("password_required") is False and facts.get("beyond_loopback") is True:
        warn(f"Redis runs commands for clients without a password (the default user is on with nopass) and "
             f"listens beyond loopback (bind {facts['bind']}): anyone who reaches its port can read, delete and "
             "forge jobs. Fix: ACL users with passwords and `user default off` (deploy/users.acl), "
             "or `bind 127.0.0.1 -::1`")
    if facts.get("protected_mode") == "no":
        warn("protected-mode is off: a Redis without a password and without `bind` then serves every network "
             "it is on. Fix: `protected-mode yes`")

    fsync = facts["appendfsync"]
    if fsync == UNKNOWN and facts["aof_enabled"]:
        warn("appendfsync cannot be read here (CONFIG is renamed or forbidden): an OS crash may lose up to "
             "the fsync interval of writes. `appendfsync everysec` is recommended")
    elif fsync == "no" and facts["aof_enabled"]:
        warn("appendfsync no: an OS crash or power cut can lose ~30 s of acknowledged writes "
             "(a Redis crash alone loses nothing). `appendfsync everysec` bounds it to ~1 s")
    return report


def check(connection: Redis, exposure: bool = False) -> DurabilityReport:
    """Read and judge the durability of the Redis behind ``connection``.

    ``exposure`` (what ``rqplus check`` does) also asks, on a second connection without credentials,
    whether the server runs commands for anyone (facts ``password_required`` and ``beyond_loopback``),
    warning when it does and listens beyond loopback. Raises redis-py's ``ConnectionError`` when
    Redis cannot be reached.

    Usage: ``check(Redis.from_url(url)).ok``
    """
    facts = read_facts(connection)
    if exposure:
        facts["beyond_loopback"] = _beyond_loopback(connection, facts["bind"])
        facts["password_required"] = not answers_anonymously(connection)
    return judge(facts)


#: How long :func:`cached_check` trusts a report, in seconds: enqueues stay fast, and a Redis that
#: stops being durable is noticed within this time.
CHECK_CACHE_SECONDS = 1.0
_cache: WeakKeyDictionary[ConnectionPool, tuple[float, DurabilityReport]] = WeakKeyDictionary()


def cached_check(connection: Redis, max_age: float = CHECK_CACHE_SECONDS) -> DurabilityReport:
    """:func:`check`, reusing a report younger than ``max_age`` seconds for the same connection pool.

    Usage: ``cached_check(queue.connection).ok``
    """
    now = time.monotonic()
    cached = _cache.get(connection.connection_pool)
    if cached and now - cached[0] < max_age:
        return cached[1]
    report = check(connection)
    _cache[connection.connection_pool] = (now, report)
    return report


def require_durable(connection: Redis) -> None:
    """Raise :class:`rqplus.exceptions.DurabilityError` (listing each problem) unless Redis is durable.

    Usage: ``require_durable(redis)  # before writing anything``
    """
    report = cached_check(connection)
    if not report.ok:
        raise DurabilityError(report.problems)
