"""rqplus's Lua: one file per Redis function, and ``helpers.lua`` that every function shares.

The files are the only copy of rqplus's Lua and of the constants it shares with Python (the window
size, the priority range, the most jobs per call): Python reads those from ``helpers.lua``, so the
two never disagree. :mod:`rqplus.functions` assembles the files into one Redis function library.

Usage::

    from rqplus.lua import FUNCTIONS, constant, source
    constant("WINDOW")          # -> 1000
    source("enqueue")           # the body of the `enqueue` function
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

#: The file every function shares (its locals are the functions' helpers).
HELPERS = "helpers"
#: rqplus's functions: each one's name (its file, without ``.lua``) and whether it only reads
#: (Redis' ``no-writes`` flag: it may be called with FCALL_RO, and FUNCTION KILL can stop it).
FUNCTIONS = {
    "priority_insert": False, "enqueue": False, "requeue_failed": False, "refill": False, "merge_backlog": False,
    "quarantine": False, "reliable_fetch": False, "fetch_many": False, "start_many": False, "finish_many": False,
    "rescue": False, "find_abandoned": True,
}


@cache
def source(name: str) -> str:
    """The Lua of ``name`` (a function of :data:`FUNCTIONS`, or :data:`HELPERS`).

    Usage: ``source("refill")``
    """
    if name != HELPERS and name not in FUNCTIONS:
        raise KeyError(f"no rqplus Lua named {name!r}: one of {HELPERS}, {', '.join(FUNCTIONS)}")
    return files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


@cache
def constants() -> dict[str, int]:
    """Every constant of ``helpers.lua`` (``local NAME = <integer>`` at the start of a line).

    Usage: ``constants()["MAX_PRIORITY"]  # -> 9``
    """
    return {name: int(value) for name, value in re.findall(r"^local ([A-Z][A-Z_]*) = (-?\d+)$", source(HELPERS), re.M)}


def constant(name: str) -> int:
    """One constant of ``helpers.lua``; ``KeyError`` naming the ones there for another name.

    Usage: ``WINDOW = constant("WINDOW")``
    """
    try:
        return constants()[name]
    except KeyError:
        raise KeyError(f"helpers.lua defines no constant {name!r}: it has {', '.join(constants())}") from None
