"""tasks/settings.py: settings from the environment, defaults kept, bad values named by variable."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from tasks.settings import flag, from_env, names, number, positive_decimal, seconds, tcp_port, text, whole


@dataclass(frozen=True)
class Example:
    host: str = "localhost"
    port: int = 25
    tls: bool = False
    limit: Decimal = Decimal("10")
    intervals: tuple[int, ...] = (10, 60)


VARIABLES = {"host": ("EX_HOST", text), "port": ("EX_PORT", tcp_port), "tls": ("EX_TLS", flag),
             "limit": ("EX_LIMIT", positive_decimal), "intervals": ("EX_INTERVALS", seconds)}


def test_unset_variables_keep_the_defaults_and_set_ones_are_parsed():
    assert from_env(Example, VARIABLES, {}) == Example()
    assert from_env(Example, VARIABLES, {"EX_HOST": " mail ", "EX_PORT": "2525", "EX_TLS": "Yes",
                                         "EX_LIMIT": "49.99", "EX_INTERVALS": "1, 2,,3"}) == \
        Example("mail", 2525, True, Decimal("49.99"), (1, 2, 3))


def test_os_environ_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("EX_PORT", "587")
    assert from_env(Example, VARIABLES).port == 587


@pytest.mark.parametrize("variable, raw, reason", [
    ("EX_PORT", "smtp", "expected a whole number >= 1"), ("EX_PORT", "0", "expected a whole number >= 1"),
    ("EX_PORT", "65536", "expected a TCP port"), ("EX_TLS", "maybe", "expected true or false"),
    ("EX_LIMIT", "lots", "expected a positive number"), ("EX_LIMIT", "-1", "expected a positive number"),
    ("EX_LIMIT", "NaN", "expected a positive number"), ("EX_INTERVALS", "10,-1", "expected a whole number >= 0"),
])
def test_a_bad_value_is_refused_naming_its_variable(variable, raw, reason):
    with pytest.raises(ValueError, match=f"^{variable}={raw!r}: {reason}"):
        from_env(Example, VARIABLES, {variable: raw})


def test_number_and_whole_bounds():
    assert number(0)("0") == 0 and number(0.5)("2.5") == 2.5
    for raw in ("inf", "nan", "-0.1", "x"):
        with pytest.raises(ValueError, match="expected a number >= 0"):
            number(0)(raw)
    assert whole(0)(" 3 ") == 3
    with pytest.raises(ValueError):
        whole(0)("2.5")
    assert names(" a.b , ,c ") == ("a.b", "c")
