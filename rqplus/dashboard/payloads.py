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

from rqplus.job import BoundedData
from rqplus.serializers import SafeSerializer


class DashboardJob(BoundedData, Job):
    """An RQ ``Job`` whose payloads (meta, arguments, results) always load through :class:`SafeSerializer`.

    Usage: ``DashboardJob.fetch(job_id, connection=redis).meta``
    """

    meta_error: str | None = None  # why the stored meta could not be loaded (RQ keeps its bytes alone)

    # RQ change: the serializer a caller passes (RQ's workers and rq-scheduler pass pickle) is
    # ignored, so no code path of the dashboard unpickles with the stock unpickler.
    def __init__(self, id: str | None = None, connection: Redis | None = None, serializer: Any = None) -> None:
        super().__init__(id, connection=connection, serializer=SafeSerializer)

    # RQ change: a meta that could not be loaded keeps why, for the job page (RQ keeps its bytes in
    # meta["unserialized"] and drops the error); the load is refused again, as quickly.
    def restore(self, raw_data: Any) -> Any:
        """RQ's restore of the job's fields, keeping why its meta could not be loaded in ``meta_error``.

        Usage: ``DashboardJob.fetch(job_id, connection=redis).meta_error  # -> "UnsafePickleError: ..."``
        """
        result = super().restore(raw_data)
        unread = self.meta.get("unserialized") if isinstance(self.meta, dict) and len(self.meta) == 1 else None
        self.meta_error = None
        if isinstance(unread, bytes):
            try:
                self.serializer.loads(unread)
            except Exception as error:
                self.meta_error = f"{type(error).__name__}: {error}"
        return result

