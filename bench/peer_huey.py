"""huey (``RedisHuey``) peer of ``bench_workers.py``: ``bench.jobs``' sync functions as huey tasks.

Its Redis is ``$BENCH_REDIS_URL``, read at import: the driver sets it before importing this module,
and the consumer inherits it. Defaults otherwise (blocking dequeue, results kept when not None: the
jobs return None).

Usage: ``huey_consumer bench.peer_huey.huey -w 8 -k thread`` (consumer); ``TASKS["noop"]()`` (producer).
"""

from __future__ import annotations

import os

from huey import RedisHuey
from huey.api import TaskWrapper

from bench import jobs

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"])

#: task of each job function, by its name in ``bench.jobs``
TASKS: dict[str, TaskWrapper] = {
    func.__name__: huey.task()(func) for func in (jobs.noop, jobs.sleep_50ms, jobs.stamp, jobs.first, jobs.last)
}
