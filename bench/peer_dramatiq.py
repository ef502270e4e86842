"""dramatiq (Redis broker) peer of ``bench_workers.py``: ``bench.jobs``' sync functions as actors on queue "bench".

The broker's Redis is ``$BENCH_REDIS_URL``, read at import: the driver sets it before importing this
module, and the worker inherits it. Defaults otherwise (dramatiq's default middleware, no results).

Usage: ``dramatiq bench.peer_dramatiq -p 1 -t 8`` (worker); ``ACTORS["noop"].send()`` (producer).
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench import jobs

QUEUE = "bench"

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)

#: actor of each job function, by its name in ``bench.jobs``
ACTORS: dict[str, dramatiq.Actor] = {
    func.__name__: dramatiq.actor(func, queue_name=QUEUE, broker=broker)
    for func in (jobs.noop, jobs.sleep_50ms, jobs.stamp, jobs.first, jobs.last)
}
