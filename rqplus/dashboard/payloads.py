"""How the dashboard reads job data: never running code from Redis, never showing secrets.

Anyone who can write to Redis can forge a job whose pickled meta, arguments or result runs code
when unpickled. The dashboard therefore loads every payload with :class:`SafeSerializer`: JSON as
is, pickles through an unpickler that builds only plain data and the standard data classes of
:data:`rqplus.serializers.SAFE_GLOBALS` (dates, decimals, UUIDs, collections). Any other class or function named in a pickle becomes a :class:`Withheld`
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

from rqplus.serializers import RestrictedUnpickler

#: Environment variable listing the key fragments whose values are masked (comma-separated).
MASK_KEYS_ENV = "RQPLUS_DASHBOARD_MASK_KEYS"
DEFAULT_MASK_KEYS = ("password", "token", "secret", "card", "cvv", "iban")
MASK = "***"

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


class _DashboardUnpickler(RestrictedUnpickler):
    # Plain-data constructors pass; anything else gets a placeholder class named after it, so a
    # page still shows the rest of the payload.
    def refused(self, module: str, name: str) -> Any:
        return _WithheldType(name, (Withheld,), {"origin": f"{module}.{name}"})


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
        return _DashboardUnpickler(io.BytesIO(data)).load()


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
    the side of hiding (``discard`` matches ``card``). In text, a value that is a container or a
    call (``password=['a', 'b']``, ``card=Card('4111 1111')``) is masked up to its closing
    bracket, brackets inside quotes aside; one never closed is masked to the end of the text.

    Usage: ``Masker().data({"user": 7, "api_token": "x"}) == {"user": 7, "api_token": "***"}``
    """

    def __init__(self, keys: Iterable[str] | None = None) -> None:
        self.keys = tuple(k.lower() for k in (mask_keys() if keys is None else keys))
        fragments = "|".join(map(re.escape, self.keys))
        # a key (optionally quoted) containing a fragment, `=` or `:`, then one value: a container
        # or call (its opening bracket; the rest is found by _bracketed_end), a quoted string, or
        # a bare word; a bare value that is itself a sensitive key is left to its own match, so
        # that in "CardError: card='4111 1111'" the quoted number is masked whole. Linear time: a
        # key starts only where a word starts, the fragment is looked for inside that word alone,
        # and words and quoted strings are taken whole (possessive: no backtracking into them)
        key = rf"""(?<![\w.'"-])['"]?(?=[\w.-]*?(?:{fragments}))[\w.-]++['"]?"""
        self._pattern = re.compile(
            rf"""(?ix) ({key} \s* [=:] \s*)
                 ( (?P<opening>[\w.]*+[\[({{]) | '(?:[^'\\]++|\\.)*+' | "(?:[^"\\]++|\\.)*+"
                 | (?!{key} \s* [=:]) [^\s,;&)}}\]]+ )"""
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

        Usage: ``Masker().text("charge(card='4111', tags=['a'])") == "charge(card='***', tags=['a'])"``
        """
        if not text or self._pattern is None:
            return text
        shown, position = [], 0
        # each search starts where the last masked value ended: every character is read once
        while (found := self._pattern.search(text, position)) is not None:
            value = found.group(2)
            shown += [text[position:found.start(2)], _quoted_mask(value)]
            position = _bracketed_end(text, found.end() - 1) if found.group("opening") else found.end()
        return "".join(shown) + text[position:]


#: Inside brackets: a run of other characters, a quoted string (possessive: an unclosed one fails
#: in one pass), or one bracket.
_BRACKETED_TOKEN = re.compile(r"""[^][(){}'"]++ | '(?:[^'\\]++|\\.)*+' | "(?:[^"\\]++|\\.)*+" | [][(){}]""",
                              re.VERBOSE | re.DOTALL)
_CLOSING = {"(": ")", "[": "]", "{": "}"}


def _bracketed_end(text: str, opening: int) -> int:
    """Where the bracketed value opened at ``text[opening]`` ends: after its matching closing
    bracket, or at the end of the text when it never closes (or a quote inside never does)."""
    expected: list[str] = []
    position = opening
    while (token := _BRACKETED_TOKEN.match(text, position)) is not None:
        position, char = token.end(), token.group()
        if char in _CLOSING:
            expected.append(_CLOSING[char])
        elif char == expected[-1]:  # a closing bracket of another kind is skipped: hide more, not less
            expected.pop()
            if not expected:
                return position
    return len(text)


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
