"""How the dashboard reads job data: never running code from Redis, never showing secrets.

Anyone who can write to Redis can forge a job whose pickled meta, arguments or result runs code
when unpickled. The dashboard therefore loads every payload with
:class:`rqplus.serializers.SafeSerializer`: JSON as is, pickles through an unpickler that builds
only plain data and the standard data classes of :data:`rqplus.serializers.SAFE_GLOBALS` (dates,
decimals, UUIDs, collections). Any other class or function named in a pickle becomes a
``Withheld`` placeholder (shown as ``<not loaded: module.name>``), without being imported or called.

Values under sensitive keys (``password``, ``token``, ``secret``, ``card``, ``cvv``, ``iban`` by
default, ``RQPLUS_DASHBOARD_MASK_KEYS`` to change) are masked before anything is shown.

Usage::

    from rqplus.dashboard.payloads import DashboardJob, Masker
    job = DashboardJob.fetch(job_id, connection=redis)     # nothing foreign is unpickled
    Masker().text(job.description)                          # "charge(card='***')"
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from redis import Redis
from rq.job import Job

from rqplus.job import BoundedData
from rqplus.serializers import SafeSerializer

#: Environment variable listing the key fragments whose values are masked (comma-separated).
MASK_KEYS_ENV = "RQPLUS_DASHBOARD_MASK_KEYS"
DEFAULT_MASK_KEYS = ("password", "token", "secret", "card", "cvv", "iban")
MASK = "***"


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
