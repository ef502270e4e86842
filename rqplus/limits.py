"""Input limits: what a producer may ask of a job, checked before anything is written to Redis.

RQ writes whatever it is given and fails later, or half-way: ``ttl=10**20`` fails inside the
enqueue's MULTI after Redis applied the commands before it; ``job_timeout=10**30`` makes a forked
worker's ``signal.alarm`` overflow and a ``SimpleWorker`` crash on ``EXPIRE``; ``result_ttl=10**20``
turns a successful job into a failed one; ``failure_ttl=0`` deletes a failed job's hash while its
id stays in the failed registry; a 100,000-character job id or a queue name holding ``\\x00`` or
``<svg>`` becomes a key. Here each option is checked, and normalized, first:

* **Durations** (:data:`DURATIONS`): ``job_timeout`` (RQ's ``timeout``), ``result_ttl``,
  ``failure_ttl``, ``ttl``: whole seconds (an ``int``) or RQ's string forms (``"90"``, ``"90s"``,
  ``"10m"``, ``"2h"``, ``"1d"``), from a minimum to :data:`~rqplus.defaults.MAX_DURATION` (10
  years), ``-1`` where RQ reads it as "no limit" / "for ever"; None leaves RQ's default.
* **Job ids**: RQ's characters (ASCII letters, digits, ``_``, ``-``), at most
  :data:`~rqplus.defaults.MAX_JOB_ID` of them; the ids of ``depends_on`` too.
* **Queue names** (:func:`check_queue_name`): ASCII letters, digits, ``_ - . :``, at most
  :data:`~rqplus.defaults.MAX_QUEUE_NAME` characters, no key of RQ's or rqplus' layout.

``TypeError`` for a value of the wrong type, ``ValueError`` for one out of bounds (a bad duration
string raises :class:`DurationFormatError`, a ``ValueError`` that is also RQ's ``TimeoutFormatError``).

Usage::

    from rqplus.limits import check_options, check_queue_name
    check_queue_name("emails:high")
    options = {"timeout": "10m", "result_ttl": -1, "job_id": "order-42"}
    check_options(options)            # options["timeout"] == 600
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rq.exceptions import TimeoutFormatError
from rq.job import Dependency, Job

from rqplus.defaults import MAX_DURATION, MAX_JOB_ID, MAX_QUEUE_NAME

#: RQ's job id characters (rq.job.JOB_ID_PATTERN, in rq 2.12 and 3.x alike), with rqplus' length bound.
JOB_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_JOB_ID}}}")
#: A queue name's characters; its ``:``-separated parts are checked as well (see check_queue_name).
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
#: RQ's key prefixes: a name starting with one is a key passed as a name (``queue.key``, ``rq:job:abc``).
KEY_PREFIXES = ("rq", "rqplus")
#: Key suffixes RQ and rqplus derive from a queue's name: a name with one of them as a part (but the
#: first) would be another queue's key (``rq:queue:<name>:intermediate``, ``...:intermediate:first_seen:<id>``,
#: ``rqplus:window:<name>:levels``).
RESERVED_PARTS, RESERVED_LAST_PART = ("intermediate",), ("levels",)
#: RQ's duration strings: whole seconds, or digits and a unit (as rq.utils.parse_timeout reads them).
_DURATION = re.compile(r"\s*([+-]?[0-9]+)\s*([smhd]?)\s*", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class DurationFormatError(ValueError, TimeoutFormatError):
    """A duration string that is neither whole seconds nor digits and a unit (``"10m"``)."""


@dataclass(frozen=True)
class Duration:
    """A duration option: its name at enqueue, its name in ``Queue.create_job`` (and on ``Job``),
    its least value, and whether ``-1`` (RQ: no limit / for ever) is accepted."""

    option: str
    field: str
    minimum: int
    forever: bool

    def check(self, value: Any) -> int | None:
        """``value`` in whole seconds, checked; None stays None (RQ's default).

        Usage: ``DURATIONS[0].check("10m") == 600``
        """
        if value is None:
            return None
        if isinstance(value, str):
            found = _DURATION.fullmatch(value)
            if found is None:
                raise DurationFormatError(f"{self.option}={value!r} is not a duration: write whole seconds or "
                                          "digits and a unit, e.g. 90, '90s', '10m', '2h', '1d'")
            seconds = int(found[1]) * _UNITS[found[2].lower()]
        elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
            seconds = int(value)
        else:
            raise TypeError(f"{self.option} must be whole seconds (an int) or RQ's '10m' form, "
                            f"not {type(value).__name__}: {value!r}")
        if not (self.minimum <= seconds <= MAX_DURATION or (self.forever and seconds == -1)):
            allowed = f"{self.minimum} to {MAX_DURATION:,} (10 years)" + (", or -1 for ever" if self.forever else "")
            raise ValueError(f"{self.option}={value!r} is out of range: seconds from {allowed}")
        return seconds


#: The durations a job takes, with their bounds: a timeout of 0 is refused by RQ itself; a
#: ``failure_ttl`` of 0 would delete a failed job at once (its id left in the failed registry);
#: ``result_ttl=0`` keeps no result, as RQ documents; ``ttl`` has no "for ever" but None.
DURATIONS = (Duration("job_timeout", "timeout", 1, True), Duration("result_ttl", "result_ttl", 0, True),
             Duration("failure_ttl", "failure_ttl", 0, True), Duration("ttl", "ttl", 1, False))


def check_options(options: dict[str, Any], default_timeout: Any = None) -> None:
    """Check the job options of ``Queue.create_job`` (or ``Queue.prepare_data``) in ``options``:
    each duration (by its field name, ``timeout`` and not ``job_timeout``) is replaced by its
    value in seconds; ``job_id`` and the ids of ``depends_on`` are checked; a queue's
    ``default_timeout`` stands in for a ``timeout`` left None.

    Usage: ``check_options(arguments, default_timeout=queue._default_timeout)``
    """
    for duration in DURATIONS:
        if options.get(duration.field) is not None:
            options[duration.field] = duration.check(options[duration.field])
    if options.get("timeout") is None and default_timeout is not None:
        Duration("default_timeout", "timeout", 1, True).check(default_timeout)
    if options.get("job_id") is not None:
        check_job_id(options["job_id"])
    for job_id in _dependency_ids(options.get("depends_on")):
        check_job_id(job_id, "depends_on")


def check_job_id(job_id: Any, option: str = "job_id") -> None:
    """Raise ``TypeError`` unless ``job_id`` is a str, ``ValueError`` unless it is 1 to
    :data:`~rqplus.defaults.MAX_JOB_ID` of RQ's id characters.

    Usage: ``check_job_id("order-42")``
    """
    if not isinstance(job_id, str):
        raise TypeError(f"{option}: a job id is a str, not {type(job_id).__name__}: {job_id!r}")
    if not JOB_ID.fullmatch(job_id):
        shown = job_id if len(job_id) <= 80 else f"{job_id[:40]}...({len(job_id):,} characters)"
        raise ValueError(f"{option}: job id {shown!r} is not 1 to {MAX_JOB_ID} ASCII letters, digits, '_' or '-'")


def _dependency_ids(depends_on: Any) -> Iterable[Any]:
    """The job ids ``depends_on`` names (a job, an id, an rq ``Dependency``, or a list of them);
    jobs already made carry ids RQ checked."""
    for item in depends_on if isinstance(depends_on, (list, tuple)) else [depends_on] if depends_on else []:
        if isinstance(item, Dependency):
            yield from _dependency_ids(list(item.dependencies))
        elif not isinstance(item, Job):
            yield item


def check_queue_name(name: object) -> None:
    """Raise ``ValueError`` (``TypeError`` for a non-str) unless ``name`` can name a queue: 1 to
    :data:`~rqplus.defaults.MAX_QUEUE_NAME` of ASCII letters, digits, ``_ - . :``. Colons group
    names (``emails:high``): each ``:``-separated part is non-empty, the first is not ``rq`` or
    ``rqplus`` (a key passed as a name), none is ``intermediate`` and the last is not ``levels``
    (RQ and rqplus derive those keys from a queue's name: such a name would be another queue's key).

    Usage: ``check_queue_name("emails:high")``
    """
    if not isinstance(name, str):
        raise TypeError(f"a queue name is a str, not {type(name).__name__}: {name!r}")
    if not name.strip():
        raise ValueError(f"queue name {name!r} is empty: name the queue, e.g. Queue('emails')")
    if len(name) > MAX_QUEUE_NAME:
        raise ValueError(f"queue name of {len(name):,} characters is over the {MAX_QUEUE_NAME} character limit")
    if not QUEUE_NAME.fullmatch(name):
        odd = sorted({char for char in name if not QUEUE_NAME.fullmatch(char)})
        raise ValueError(f"queue name {name!r} holds {', '.join(map(repr, odd))}: a queue name is ASCII letters, "
                         "digits, '_', '-', '.' and ':'")
    parts = name.split(":")
    if "" in parts:
        raise ValueError(f"queue name {name!r} has an empty ':'-separated part")
    if len(parts) > 1 and parts[0] in KEY_PREFIXES:
        raise ValueError(f"queue name {name!r} starts with {parts[0] + ':'!r}, a prefix of RQ's keys: name the queue "
                         "(Queue('emails')), not its key")
    derived = [(index, part) for index, part in enumerate(parts) if index and (
        part in RESERVED_PARTS or (part in RESERVED_LAST_PART and index == len(parts) - 1))]
    if derived:
        index, part = derived[0]
        raise ValueError(f"queue name {name!r} would be a key RQ or rqplus derives from queue "
                         f"{':'.join(parts[:index])!r} (its {part!r} key): choose another name")
