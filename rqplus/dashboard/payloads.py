"""How the dashboard reads job data: never running code from Redis, never showing secrets.

Anyone who can write to Redis can forge a job whose pickled meta, arguments or result runs code
when unpickled. The dashboard therefore loads every payload with :class:`SafeSerializer`: JSON as
is, pickles through an unpickler that builds only plain data (containers, numbers, text, dates,
decimals, UUIDs). Any other class or function named in a pickle becomes a :class:`Withheld`
placeholder (shown as ``<not loaded: module.name>``), without being imported or called.

Values under sensitive keys (``password``, ``token``, ``secret``, ``card``, ``cvv``, ``iban`` by
default, ``RQPLUS_DASHBOARD_MASK_KEYS`` to change) are masked before anything is shown.

Usage::

    from rqplus.dashboard.payloads import DashboardJob, Masker
    job = DashboardJob.fetch(job_id, connection=redis)     # nothing foreign is unpickled
    Masker().text(job.description)                          # "charge(card='***')"
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from collections.abc import Iterable
from typing import Any

from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

#: Environment variable listing the key fragments whose values are masked (comma-separated).
MASK_KEYS_ENV = "RQPLUS_DASHBOARD_MASK_KEYS"
DEFAULT_MASK_KEYS = ("password", "token", "secret", "card", "cvv", "iban")
MASK = "***"

#: The only globals a pickle may name and get built for real: constructors of plain data.
SAFE_GLOBALS = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
    ("builtins", "slice"), ("collections", "OrderedDict"), ("collections", "deque"),
    ("datetime", "date"), ("datetime", "time"), ("datetime", "datetime"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("uuid", "UUID"),
})


class _WithheldType(type):
    def __repr__(cls) -> str:
        return f"<not loaded: {cls.origin}>"


class Withheld(metaclass=_WithheldType):
    """Stands in for an object of a class (or a function) the dashboard refuses to import.

    Whatever the pickle passes to it (constructor arguments, state) is dropped unseen, so nothing
    of it, secrets included, can be shown either.
    """

    origin = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Withheld:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, *dropped: Any) -> None:
        """Drops what an unpickled list or dict subclass (``defaultdict``, ``Counter``) fills itself with.

        Usage: ``withheld.append(1)  # nothing kept``
        """

    extend = __setitem__ = append

    def __repr__(self) -> str:
        return f"<not loaded: {self.origin}>"


class _RestrictedUnpickler(pickle.Unpickler):
    # The one door through which a pickle reaches code: plain-data constructors pass, anything
    # else gets a placeholder class named after it.
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        return _WithheldType(name, (Withheld,), {"origin": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not loaded by the dashboard")


class RestrictedPickleSerializer:
    """Writes pickles as RQ's default serializer does; reads them without importing anything.

    Usage: ``rqplus.Queue(name, connection=redis, serializer=RestrictedPickleSerializer)``
    """

    @staticmethod
    def dumps(obj: Any) -> bytes:
        """``obj`` pickled at the highest protocol, as RQ's ``DefaultSerializer`` writes it.

        Usage: ``RestrictedPickleSerializer.dumps({"a": 1})``
        """
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        """The plain data in a pickle; classes and functions it names become :class:`Withheld`.

        Usage: ``RestrictedPickleSerializer.loads(job_hash[b"meta"])``
        """
        return _RestrictedUnpickler(io.BytesIO(data)).load()


def _is_json(data: bytes) -> bool:
    # pickle protocol 2+ opens with PROTO (0x80); RQ writes HIGHEST_PROTOCOL. Older protocols are
    # read by the restricted unpickler too, which is safe for any input.
    if data[:1] == b"\x80":
        return False
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def serializer_for(data: bytes) -> type:
    """The serializer that wrote ``data`` (JSON, else pickle), in its safe-to-read form.

    Usage: ``rqplus.Queue(job.origin, connection=redis, serializer=serializer_for(job.data))``
    """
    return JSONSerializer if _is_json(data) else RestrictedPickleSerializer


class SafeSerializer:
    """Reads JSON and pickle payloads alike, safely; the dashboard's read-only serializer.

    Writing goes through :func:`serializer_for`, so a job is saved back in its own format.
    """

    @staticmethod
    def dumps(obj: Any) -> bytes:
        """Always raises ``TypeError``: this serializer only reads.

        Usage: save with ``serializer_for(job.data).dumps(value)`` instead
        """
        raise TypeError("SafeSerializer only reads: save jobs with serializer_for(job.data)")

    @staticmethod
    def loads(data: bytes) -> Any:
        """JSON or pickle ``data`` loaded safely (see :func:`serializer_for`).

        Usage: ``SafeSerializer.loads(b'{"a": 1}') == {"a": 1}``
        """
        return serializer_for(data).loads(data)


class DashboardJob(Job):
    """An RQ ``Job`` whose payloads (meta, arguments, results) always load through :class:`SafeSerializer`.

    Usage: ``DashboardJob.fetch(job_id, connection=redis).meta``
    """

    # RQ change: the serializer a caller passes (RQ's workers and rq-scheduler pass pickle) is
    # ignored, so no code path of the dashboard unpickles with the stock unpickler.
    def __init__(self, id: str | None = None, connection: Redis | None = None, serializer: Any = None) -> None:
        super().__init__(id, connection=connection, serializer=SafeSerializer)


def withheld_in(value: Any) -> list[str]:
    """The origins of every :class:`Withheld` inside ``value`` (empty when it is plain data).

    Usage: ``withheld_in(job.meta) == []``
    """
    if isinstance(value, Withheld) or (isinstance(value, type) and issubclass(value, Withheld)):
        return [value.origin]
    if isinstance(value, dict):
        return [origin for item in value.items() for origin in withheld_in(item)]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [origin for item in value for origin in withheld_in(item)]
    return []


def mask_keys() -> tuple[str, ...]:
    """The sensitive key fragments: ``$RQPLUS_DASHBOARD_MASK_KEYS`` (comma-separated) or the defaults.

    Usage: ``mask_keys() == ("password", "token", "secret", "card", "cvv", "iban")``
    """
    configured = os.environ.get(MASK_KEYS_ENV)
    if configured is None:
        return DEFAULT_MASK_KEYS
    return tuple(key.strip().lower() for key in configured.split(",") if key.strip())


class Masker:
    """Masks the values of sensitive keys: in data (dicts at any depth) and in text (``key=value``,
    ``'key': 'value'``, as in a job's description or a URL's query).

    A key is sensitive when its name contains one of ``keys`` (case-insensitive): masking errs on
    the side of hiding (``discard`` matches ``card``).

    Usage: ``Masker().data({"user": 7, "api_token": "x"}) == {"user": 7, "api_token": "***"}``
    """

    def __init__(self, keys: Iterable[str] | None = None) -> None:
        self.keys = tuple(k.lower() for k in (mask_keys() if keys is None else keys))
        fragments = "|".join(map(re.escape, self.keys))
        # a key (optionally quoted) containing a fragment, `=` or `:`, then one quoted or bare value;
        # a bare value that is itself a sensitive key is left to its own match, so that in
        # "CardError: card='4111 1111'" the quoted number is masked whole. Linear time: a key
        # starts only where a word starts, the fragment is looked for inside that word alone, and
        # the word is then taken whole (possessive: no backtracking into it)
        key = rf"""(?<![\w.'"-])['"]?(?=[\w.-]*?(?:{fragments}))[\w.-]++['"]?"""
        self._pattern = re.compile(
            rf"""(?ix) ({key} \s* [=:] \s*)
                 ( '(?:[^'\\]|\\.)*' | "(?:[^"\\]|\\.)*" | (?!{key} \s* [=:]) [^\s,;&)}}\]]+ )"""
        ) if self.keys else None

    def sensitive(self, key: Any) -> bool:
        """True when ``key`` is a string naming one of the sensitive fragments (case-insensitive).

        Usage: ``Masker().sensitive("User_Password") is True``
        """
        return isinstance(key, str) and any(fragment in key.lower() for fragment in self.keys)

    def data(self, value: Any) -> Any:
        """``value`` with every sensitive dict entry's value replaced by ``***`` (and strings masked).

        Usage: ``Masker().data({"card": "4111"}) == {"card": "***"}``
        """
        if isinstance(value, dict):
            return {k: MASK if self.sensitive(k) else self.data(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self.data(item) for item in value)
        if isinstance(value, str):
            return self.text(value)
        return value

    def text(self, text: str | None) -> str | None:
        """``text`` with the value after each sensitive ``key=`` / ``key:`` replaced by ``***``.

        Usage: ``Masker().text("charge(card='4111')") == "charge(card='***')"``
        """
        if not text or self._pattern is None:
            return text
        return self._pattern.sub(lambda m: m.group(1) + _quoted_mask(m.group(2)), text)


def _quoted_mask(value: str) -> str:
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{quote}{MASK}{quote}"


def shown(value: Any, masker: Masker) -> Any:
    """``value`` masked and made JSON-safe for a page: plain data stays data, anything else its repr.

    Usage: ``shown(job.meta, Masker())``
    """
    return _plain(masker.data(value), masker)  # masked once, here; below only reprs still need it


def _plain(value: Any, masker: Masker) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v, masker) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, masker) for item in value]
    return masker.text(repr(value))
