"""How the dashboard reads job data: never running code from Redis, never showing secrets.

Anyone who can write to Redis can forge a job whose pickled meta, arguments or result runs code
when unpickled. The dashboard therefore loads every payload with
:class:`rqplus.serializers.SafeSerializer`: JSON as is, pickles through an unpickler that builds
only plain data and the standard data classes of :data:`rqplus.serializers.SAFE_GLOBALS` (dates,
decimals, UUIDs, collections). Any other class or function named in a pickle becomes a
``Withheld`` placeholder (shown as ``<not loaded: module.name>``), without being imported or called.

Secrets are masked before anything is shown: see :mod:`rqplus.dashboard.masking`.

Usage::

    from rqplus.dashboard.payloads import DashboardJob
    job = DashboardJob.fetch(job_id, connection=redis)     # nothing foreign is unpickled
"""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq.job import Job

from rqplus.serializers import SafeSerializer


class DashboardJob(Job):
    """An RQ ``Job`` whose payloads (meta, arguments, results) always load through :class:`SafeSerializer`.

    Usage: ``DashboardJob.fetch(job_id, connection=redis).meta``
    """

    # RQ change: the serializer a caller passes (RQ's workers and rq-scheduler pass pickle) is
    # ignored, so no code path of the dashboard unpickles with the stock unpickler.
    def __init__(self, id: str | None = None, connection: Redis | None = None, serializer: Any = None) -> None:
        super().__init__(id, connection=connection, serializer=SafeSerializer)
