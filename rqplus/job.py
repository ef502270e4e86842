"""``rqplus.job.Job``: RQ's ``Job`` whose function and callbacks resolve through the allow-list.

RQ turns a job's function name (and its callbacks' names) into a callable with
``import_attribute``, which imports any module and walks through any module global. Here the same
properties resolve through :mod:`rqplus.allowlist`: what an rqplus worker calls is the object it
judged, so no check on a string can be walked around. rqplus workers use this class (or mix it
into the job class given with ``-j``) on their own; producers need nothing.

Usage::

    job = rqplus.job.Job.fetch(job_id, connection=redis)
    job.func          # the function, or ForbiddenJobError if it is not defined in an allowed module
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from rq.job import Job as RQJob

from rqplus.allowlist import resolve, resolve_job_function
from rqplus.compat import JobCompat
from rqplus.exceptions import UnsafePickleError
from rqplus.unpickling import inflated


class BoundedData:
    """Mixed into an RQ ``Job`` class: its data field is inflated to no more than a load accepts."""

    # RQ change: the data field is decompressed to at most the longest pickle a load accepts, plus
    # one byte (RQ: zlib.decompress without a bound, in a fork worker's main process too, so that a
    # forged field of 1 MB could inflate to gigabytes); such a job's data is refused as too long.
    def restore(self, raw_data: Any) -> Any:
        """RQ's restore of the job's fields, its data inflated by :func:`rqplus.unpickling.inflated`.

        Usage: ``job.restore(redis.hgetall(job.key))``
        """
        fields = dict(raw_data)
        key = next((key for key in (b"data", "data") if key in fields), None)
        if key is None:
            return super().restore(fields)  # type: ignore[misc]
        stored, fields[key] = fields[key], b""
        result = super().restore(fields)  # type: ignore[misc]
        self.data = inflated(stored)
        return result


class Job(JobCompat, BoundedData, RQJob):
    """An RQ job whose callables are resolved and judged by :mod:`rqplus.allowlist` when asked for,
    and whose meta is decoded when it is first read."""

    _meta: dict[str, Any]
    _stored_meta: bytes | None = None  # the meta field as fetched, until meta is first read
    _meta_error: Exception | None = None  # why the fetched meta could not be loaded

    # RQ change: the meta field is decoded when meta is first read (RQ: by restore, for every job
    # fetched), so a fork worker's main process, which fetches each job, decodes no job's meta but
    # to put one back at its priority (a retry or rescue after its work-horse died).
    def restore(self, raw_data: Any) -> Any:
        fields = dict(raw_data)
        stored = next((fields.pop(key) for key in (b"meta", "meta") if key in fields), None)
        result = super().restore(fields)
        self._stored_meta, self._meta_error = stored or None, None
        return result

    @property  # type: ignore[override]
    def meta(self) -> dict[str, Any]:
        stored = self._stored_meta
        if stored is not None:
            self._stored_meta = None
            try:
                self._meta = self.serializer.loads(stored)
            except Exception as error:  # as RQ's restore: the bytes kept, as RQ's placeholder
                self._meta, self._meta_error = {"unserialized": stored}, error
        return self._meta

    @meta.setter
    def meta(self, value: dict[str, Any]) -> None:
        self._stored_meta, self._meta, self._meta_error = None, value, None

    def _meta_as_stored(self) -> bytes | None:
        # the meta field's bytes while they are all meta holds: never read, or not loadable (RQ's
        # placeholder {"unserialized": <bytes>}, unchanged)
        if self._stored_meta is not None:
            return self._stored_meta
        unread = self._meta.get("unserialized") if self._meta_error is not None and len(self._meta) == 1 else None
        return unread if isinstance(unread, bytes) else None

    # RQ change: a meta never read, or one that could not be loaded, is saved back as it was
    # fetched, byte for byte (RQ decodes every fetched meta and encodes it again to save the job;
    # rq 2.12 saves its placeholder for meta it could not load instead of the bytes).
    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict:
        stored, unread = self._stored_meta, self._meta_as_stored()
        self._stored_meta = None  # RQ's to_dict reads meta (empty until decoded) even without include_meta
        try:
            fields = super().to_dict(include_meta=include_meta and unread is None, include_result=include_result)
        finally:
            self._stored_meta = stored
        if include_meta and unread is not None:
            fields["meta"] = unread
        return fields

    # RQ change: see to_dict.
    def save_meta(self) -> None:
        unread = self._meta_as_stored()
        if unread is None:
            return super().save_meta()
        self.connection.hset(self.key, "meta", unread)

    def meta_refusal(self) -> str | None:
        """Why this job must not run because of its meta (a pickle the safe unpickler refused, see
        :mod:`rqplus.unpickling`), or None. Any other unreadable meta is kept as RQ keeps it.

        Usage: ``job.meta_refusal()  # -> "UnsafePickleError: the pickle applies BUILD to a class ..."``
        """
        self.meta  # noqa: B018 -- decoded now, if it was not yet
        error = self._meta_error
        return f"UnsafePickleError: the job's meta: {error}" if isinstance(error, UnsafePickleError) else None

    # RQ change: the function is resolved by the allow-list (RQ: import_attribute of any name).
    @property
    def func(self) -> Callable[..., Any] | None:
        func_name = self.func_name
        return None if func_name is None else resolve_job_function(func_name, self.instance)

    # RQ change: equal to a job of the class this one was judged from (RQ: of its own class only),
    # so a worker's jobs compare equal to the caller's (judged_job_class mixes this class in).
    def __eq__(self, other: object) -> bool:
        return isinstance(other, RQJob) and isinstance(self, type(other)) and self.id == other.id

    __hash__ = RQJob.__hash__

    # RQ change: callbacks too, by name at every call (RQ caches whatever import_attribute found).
    @property
    def success_callback(self) -> Callable[..., Any] | None:
        return _callback(self._success_callback_name)

    @property
    def failure_callback(self) -> Callable[..., Any] | None:
        return _callback(self._failure_callback_name)

    @property
    def stopped_callback(self) -> Callable[..., Any] | None:
        return _callback(self._stopped_callback_name)


def _callback(name: str | None) -> Callable[..., Any] | None:
    return resolve(name) if name else None


@functools.lru_cache(maxsize=None)
def judged_job_class(job_class: type[RQJob]) -> type[Job]:
    """``job_class`` with :class:`Job`'s resolution mixed in (itself when it already has it).

    Usage: ``worker.job_class = judged_job_class(MyJob)``
    """
    if issubclass(job_class, Job):
        return job_class
    return type(f"Judged{job_class.__name__}", (Job, job_class), {"__module__": job_class.__module__})
