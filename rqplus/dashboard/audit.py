"""Who did what in the dashboard: a bounded log in Redis, newest first.

Each state-changing action (requeue, delete, empty, compact, bulk requeue) is recorded with the
user, the time and the client address, as JSON in one Redis list trimmed to :data:`AUDIT_LENGTH`
entries (LPUSH + LTRIM in one transaction), so it survives dashboard restarts and never grows
without bound.

Usage::

    from rqplus.dashboard import audit
    audit.record(redis, "admin", "requeue", "job 5f2c", ip="127.0.0.1")
    audit.entries(redis)[0]["action"]        # "requeue"
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

#: The Redis list holding the log, newest entry first.
AUDIT_KEY = "rqplus:dashboard:audit"
#: Entries kept; older ones are trimmed on each write.
AUDIT_LENGTH = 1000


def record(connection: Redis, user: str, action: str, target: str, ip: str | None = None, **detail: Any) -> None:
    """Append one entry: ``user`` did ``action`` on ``target`` (extra ``detail`` kept as given).

    Usage: ``record(redis, "admin", "empty", "queue emails (failed)", ip=request.remote_addr, count=3)``
    """
    entry = {"time": time.time(), "user": user, "action": action, "target": target, "ip": ip, **detail}
    with connection.pipeline() as pipe:
        pipe.lpush(AUDIT_KEY, json.dumps(entry, default=str))
        pipe.ltrim(AUDIT_KEY, 0, AUDIT_LENGTH - 1)
        pipe.execute()


def entries(connection: Redis, limit: int = 200) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, newest first.

    Usage: ``[e["user"] for e in entries(redis, 10)]``
    """
    return [json.loads(raw) for raw in connection.lrange(AUDIT_KEY, 0, limit - 1)]
