"""Settings from the environment (12-factor): the one way the task modules read theirs.

A module declares its settings as a frozen dataclass whose defaults are the documented defaults,
and, per field, the environment variable and a parser (a callable from the text to the value
that raises ``ValueError`` for text it cannot use). :func:`from_env` reads them at call time, so
a worker picks up its own environment, and names the variable of a bad value.

Usage::

    @dataclass(frozen=True)
    class SmtpSettings:
        port: int = 25

    settings = from_env(SmtpSettings, {"port": ("SMTP_PORT", tcp_port)})
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

T = TypeVar("T")
#: Per dataclass field: its environment variable and how its text is read.
Variables = Mapping[str, tuple[str, Callable[[str], Any]]]

_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off", ""})


def from_env(settings_class: type[T], variables: Variables, environ: Mapping[str, str] | None = None) -> T:
    """``settings_class`` with each field of ``variables`` read from its variable in ``environ``
    (default ``os.environ``); a field whose variable is unset keeps its default.

    Raises ``ValueError("VARIABLE='text': what is wrong")`` for a value its parser refuses.

    Usage: ``from_env(Settings, {"max_amount": ("PAYMENTS_MAX_AMOUNT", positive_decimal)})``
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field_name, (variable, parse) in variables.items():
        raw = environ.get(variable)
        if raw is None:
            continue
        try:
            values[field_name] = parse(raw)
        except (ValueError, ArithmeticError) as error:
            raise ValueError(f"{variable}={raw!r}: {error}") from None
    return settings_class(**values)


# --- parsers ---------------------------------------------------------------------------------


def text(raw: str) -> str:
    """The text without surrounding blanks."""
    return raw.strip()


def flag(raw: str) -> bool:
    """true/yes/on/1 or false/no/off/0/empty, any case."""
    value = raw.strip().lower()
    if value not in _TRUE | _FALSE:
        raise ValueError("expected true or false")
    return value in _TRUE


def number(minimum: float) -> Callable[[str], float]:
    """A parser of finite numbers >= ``minimum``: ``number(0)("2.5") == 2.5``."""
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= minimum):
            raise ValueError(f"expected a number >= {minimum:g}")
        return value
    return parse


def whole(minimum: int) -> Callable[[str], int]:
    """A parser of whole numbers >= ``minimum``: ``whole(1)("10") == 10``."""
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number >= {minimum}") from None
        if value < minimum:
            raise ValueError(f"expected a whole number >= {minimum}")
        return value
    return parse


def tcp_port(raw: str) -> int:
    """A TCP port, 1-65535."""
    value = whole(1)(raw)
    if value > 65535:
        raise ValueError("expected a TCP port, 1-65535")
    return value


def positive_decimal(raw: str) -> Decimal:
    """An exact positive amount: ``Decimal("49.99")``."""
    try:
        value = Decimal(raw.strip())
    except ArithmeticError:  # decimal.InvalidOperation: not a number at all
        raise ValueError("expected a positive number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError("expected a positive number")
    return value


def names(raw: str) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped: ``("a.b", "c.d")``."""
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def seconds(raw: str) -> tuple[int, ...]:
    """A comma-separated list of whole seconds >= 0: ``(10, 60, 300)``."""
    return tuple(whole(0)(part) for part in names(raw))
