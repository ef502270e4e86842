"""Default values used across rqplus, kept in one place (like ``rq.defaults``)."""

from rqplus.lua import constant

#: Most urgent priority. Lower numbers run first, as in the seed's sorted-set convention. Defined in
#: rqplus/lua/helpers.lua, the Lua that keeps priority order.
MIN_PRIORITY = constant("MIN_PRIORITY")
#: Least urgent priority (defined there too).
MAX_PRIORITY = constant("MAX_PRIORITY")
#: Priority given to jobs enqueued without one, and to jobs enqueued by stock RQ code.
DEFAULT_PRIORITY = 5

#: Where ``rqplus up`` looks for a Redis when ``REDIS_URL`` is unset.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Directory for the embedded Redis' data and logs (relative to the working directory).
DEFAULT_DATA_DIR = ".rqplus"
#: Queues served by ``rqplus up`` when none are named.
DEFAULT_QUEUES = ("default",)
#: Worker processes of ``rqplus worker`` and ``rqplus up`` unless told otherwise.
POOL_PROCESSES = 2
#: How long a stopping worker may take to finish its current job before its cold shutdown, in seconds.
WORKER_STOP_TIMEOUT = 30.0

#: Longest queue name accepted by ``rqplus.Queue`` (a key is built from it for every queue structure).
MAX_QUEUE_NAME = 1000
#: Longest job id accepted at enqueue (RQ checks its characters, not its length; a key holds it).
MAX_JOB_ID = 256
#: Longest ``job_timeout``, ``result_ttl``, ``failure_ttl`` and ``ttl`` accepted at enqueue, in seconds:
#: 10 years. Longer than any job or retention needs (-1 says "no limit"), and far inside what the
#: values RQ derives from them may hold: ``signal.alarm`` takes a C int (2**31 - 1 s, 68 years),
#: Redis' EXPIRE at most about 2**63 ms.
MAX_DURATION = 10 * 365 * 86400

#: Largest serialized job (function reference and arguments) accepted at enqueue, in bytes;
#: ``RQPLUS_MAX_PAYLOAD_BYTES`` overrides it. Big inputs belong in storage, with their key in the job.
MAX_PAYLOAD_BYTES = 1024 * 1024

#: Where ``rqplus dashboard`` listens, and where rq-dashboard's pages live in it.
DASHBOARD_HOST = "127.0.0.1"
DASHBOARD_PORT = 9181
DASHBOARD_PREFIX = "/rq"
