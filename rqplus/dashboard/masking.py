"""What the dashboard hides before it shows job data: secrets in keys, URLs and auth headers.

Three rules, applied to every string the dashboard shows from a job (description, arguments, meta,
result, exception text) and to every dict in that data:

1. **Sensitive keys.** A value is masked when its key's name contains one of the key fragments
   (:data:`DEFAULT_MASK_KEYS`), case-insensitive: a dict entry (``{"X-Api-Key": ...}``), and in
   text ``key=value``, ``key: value``, ``'key': 'value'`` (a description, a query string, a
   dict's repr, JSON). An ``_`` in a fragment matches ``_``, ``-``, ``.`` or nothing, so
   ``api_key`` covers ``apikey``, ``API-Key`` and ``x_api_key``.
2. **URL passwords.** ``scheme://user:PASSWORD@host`` shows as ``scheme://user:***@host``; in a
   description whose argument RQ cut short (75 characters, then ``...``) before the ``@``, the
   password is masked up to the cut.
3. **Credentials of ``Authorization`` schemes.** ``Bearer X`` and ``Basic X`` (any case) show as
   ``Bearer ***`` wherever they are, with or without a key before them.

A masked value is one word, a quoted string, or a container or call (``password=['a', 'b']``,
``card=Card('4111')``) up to its closing bracket, brackets inside quotes aside; one never closed
is masked to the end of the text. Masked text stays well-formed: when a masked value holds quote
or bracket characters that do not balance within it (``'password=abc'``: the value ``abc'``
carries the string's closing quote), those characters are kept after ``***``, so the quotes and
brackets of a description still pair up as before. Masking errs on the side of hiding
(``discard`` contains ``card``, ``author`` contains ``auth``).

Linear time in the text (a 2 MB exception text included): every character is read a bounded
number of times, whatever its content.

Usage::

    from rqplus.dashboard.masking import Masker
    Masker().text("connect('redis://app:pw@db:6379/0', headers={'Authorization': 'Bearer abc'})")
    # "connect('redis://app:***@db:6379/0', headers={'Authorization': '***'})"
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

#: Environment variable adding key fragments to the defaults (comma-separated; ``-name`` drops a default).
MASK_KEYS_ENV = "RQPLUS_DASHBOARD_MASK_KEYS"
#: Key fragments whose values are masked (substrings of the key's name, case-insensitive).
DEFAULT_MASK_KEYS = ("password", "passwd", "passphrase", "pwd", "secret", "token", "jwt", "api_key", "auth",
                     "cookie", "session", "credential", "private_key", "card", "cvv", "cvc", "iban")
#: ``Authorization`` header schemes whose credential is masked wherever it appears in text.
AUTH_SCHEMES = ("bearer", "basic")
MASK = "***"


def mask_keys() -> tuple[str, ...]:
    """The sensitive key fragments: :data:`DEFAULT_MASK_KEYS`, plus the fragments of
    ``$RQPLUS_DASHBOARD_MASK_KEYS`` (comma-separated), less its ``-name`` entries. ``ValueError``
    for a ``-name`` that is no default (a typo there would silently change nothing).

    Usage: ``mask_keys()  # RQPLUS_DASHBOARD_MASK_KEYS="pin,-auth": the defaults but auth, and pin``
    """
    entries = [entry.strip().lower() for entry in os.environ.get(MASK_KEYS_ENV, "").split(",") if entry.strip()]
    dropped = {entry[1:].strip() for entry in entries if entry.startswith("-")}
    unknown = dropped - set(DEFAULT_MASK_KEYS)
    if unknown:
        raise ValueError(f"{MASK_KEYS_ENV} drops {', '.join(sorted(unknown))}, which no default mask key is "
                         f"(the defaults: {', '.join(DEFAULT_MASK_KEYS)})")
    added = [entry for entry in entries if not entry.startswith("-") and entry not in DEFAULT_MASK_KEYS]
    return tuple(key for key in DEFAULT_MASK_KEYS if key not in dropped) + tuple(dict.fromkeys(added))


def _fragment(key: str) -> str:
    """A key fragment as a pattern: an ``_`` in it matches ``_``, ``-``, ``.`` or nothing."""
    return r"[-_.]?".join(re.escape(part) for part in key.split("_"))


class Masker:
    """Masks secrets in data (dicts at any depth, their strings) and in text: see the module's rules.

    ``keys``: the key fragments (default :func:`mask_keys`); the URL and ``Authorization`` rules
    always apply.

    Usage: ``Masker().data({"user": 7, "api_token": "x"}) == {"user": 7, "api_token": "***"}``
    """

    def __init__(self, keys: Iterable[str] | None = None) -> None:
        self.keys = tuple(k.lower() for k in (mask_keys() if keys is None else keys) if k)
        fragments = "|".join(map(_fragment, self.keys)) or "(?!)"  # (?!): no key is sensitive
        self._sensitive = re.compile(fragments, re.IGNORECASE)
        schemes = "|".join(AUTH_SCHEMES)
        # A key (optionally quoted, the quotes escaped in a string's repr) containing a fragment,
        # `=` or `:`, then one value: a container or call (its opening bracket; the rest is found
        # by _bracketed_end), a quoted string, or a bare word. A value that is itself a sensitive
        # key, or an auth scheme, is left to its own match: in "CardError: card='4111'" the
        # quoted number is masked, "Authorization: Bearer abc" keeps its scheme. Or: a URL's
        # password, or an auth scheme's credential. RQ cuts each argument of a description at 75
        # characters and adds "...": a URL cut before its "@" has its password masked up to the cut.
        # Linear time: a key starts only where a word (or its quote) starts, the fragment is
        # looked for inside that word alone, and words and quoted strings are taken whole
        # (possessive: no backtracking into them); a URL's password runs at most to the next "/"
        # (the next URL's "://" included).
        key = rf"""(?<![\w.-])(?:\\?['"])?(?=[\w.-]*?(?:{fragments}))[\w.-]++(?:\\?['"])?"""
        no_key = rf"(?!{key} \s* [=:] | (?:{schemes})\s)"  # what follows is no key, nor a scheme
        self._pattern = re.compile(
            rf"""(?ix) {key} \s* [=:] \s* {no_key}
                 (?: (?P<opening>[\w.-]*+[\[({{]) | (?P<quoted>'(?:[^'\\]++|\\.)*+' | "(?:[^"\\]++|\\.)*+")
                   | (?P<bare>{_BARE.pattern}) )
               | (?<![\w-])(?:{schemes}) \s++ {no_key} (?P<credential>{_BARE.pattern})
               | :// [^\s/?#@:]*+ : (?: (?P<password>[^\s/?#]+) @
                                      | (?P<cut>[^\s/?#@]+?) (?=\.\.\.(?:[\s,)}}\]]|$)) )""")

    def sensitive(self, key: Any) -> bool:
        """True when ``key`` is a string naming one of the sensitive fragments (case-insensitive).

        Usage: ``Masker().sensitive("User_Password") is True``
        """
        return isinstance(key, str) and self._sensitive.search(key) is not None

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
        """``text`` with each secret (see the module's rules) replaced by ``***``.

        Usage: ``Masker().text("charge(card='4111', tags=['a'])") == "charge(card='***', tags=['a'])"``
        """
        if not text:
            return text
        shown, position, quote = [], 0, ""
        # each search starts where the last masked value ended, and the string literal the text is
        # in (a description is Python) is followed along: every character is read a bounded number of times
        while (found := self._pattern.search(text, position)) is not None:
            name = found.lastgroup
            start = found.start(name)
            end = _bracketed_end(text, found.end() - 1) if name == "opening" else found.end(name)
            quote = _literal_at(text, position, start, quote)
            # a quoted value that would end the string the key is in ("f('password:', x)"), or cross its
            # end, is taken as a word: it may be the end of that string, not a string of its own
            if name == "quoted" and quote and (text[start] == quote or _through(text[start:end], quote)[0] != quote):
                end, name = _BARE.match(text, start).end(), "bare"
            masked, quote = _masked(text[start:end], quote, quoted=name == "quoted")
            shown += [text[position:start], masked]
            position = end
        return "".join(shown) + text[position:]


#: Inside brackets: a run of other characters, a quoted string (possessive: an unclosed one fails
#: in one pass), or one bracket.
_BRACKETED_TOKEN = re.compile(r"""[^][(){}'"]++ | '(?:[^'\\]++|\\.)*+' | "(?:[^"\\]++|\\.)*+" | [][(){}]""",
                              re.VERBOSE | re.DOTALL)
_CLOSING = {"(": ")", "[": "]", "{": "}"}
#: A bare value: up to a space, a separator or a closing bracket.
_BARE = re.compile(r"[^\s,;&)}\]]+")
#: Where a string literal starts; the rest of one (to its closing quote), by its quote.
_QUOTE = re.compile(r"""['"]""")
_LITERAL_REST = {q: re.compile(rf"(?:[^{q}\\]++|\\.)*+{q}", re.DOTALL) for q in ("'", '"')}
#: The characters that decide where string literals and brackets open and close.
_STRUCTURAL = re.compile(r"""[\\'"()\[\]{}]""")
#: What a masked value keeps: quotes, brackets, and backslash escapes of those (a lone backslash
#: at its end too, as it escapes what follows); an escape of anything else (group 1) goes.
_KEPT = re.compile(r"""\\(?:[\\'"()\[\]{}]|(.)|\Z)|['"()\[\]{}]""", re.DOTALL)


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


def _literal_at(text: str, start: int, end: int, quote: str) -> str:
    """The quote of the string literal ``text[end]`` is in ("" outside any), read from ``start``,
    where it was ``quote``: literals as Python writes them, backslash escapes inside."""
    position = start
    while position < end:
        if quote:
            rest = _LITERAL_REST[quote].match(text, position, end)
            if rest is None:
                return quote
            position, quote = rest.end(), ""
        else:
            opened = _QUOTE.search(text, position, end)
            if opened is None:
                return ""
            position, quote = opened.end(), opened.group()
    return quote


def _through(value: str, quote: str) -> tuple[str, bool]:
    """Read ``value`` from inside the literal of ``quote`` ("": outside any): the quote after it,
    and whether it is self-contained: it leaves the literal state as it found it, and its brackets
    (outside literals) pair up within it."""
    expected: list[str] = []
    escaped, paired = -1, True
    for found in _STRUCTURAL.finditer(value):
        index, char = found.start(), found.group()
        if index == escaped:
            continue
        if quote:
            if char == "\\":
                escaped = index + 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in _CLOSING:
            expected.append(_CLOSING[char])
        elif char in ")]}" and (not expected or expected.pop() != char):
            paired = False
    return quote, paired and not expected and escaped != len(value)


def _masked(value: str, quote: str, quoted: bool) -> tuple[str, str]:
    """``value`` (read from inside the literal of ``quote``) masked, and the quote after it. A
    self-contained value becomes ``***`` (``'***'`` when quoted); any other keeps its quotes,
    brackets and their escapes after the mask, so what follows reads as before."""
    after, contained = _through(value, quote)
    if after == quote and contained:
        return (f"{value[0]}{MASK}{value[0]}" if quoted else MASK), after
    if quoted:
        return f"{value[0]}{MASK}{_kept(value[1:-1])}{value[0]}", after
    return MASK + _kept(value), after


def _kept(value: str) -> str:
    return "".join(found.group() for found in _KEPT.finditer(value) if found.group(1) is None)


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
