"""Redis function libraries: Lua that an admin loads once (``FUNCTION LOAD``) and every role calls by
name (``FCALL``), so that no role needs ``EVAL``, with which it could run any Lua, an endless loop
included, and freeze Redis.

rqplus's library, ``rqplus_<hash>``, holds rqplus's functions (:mod:`rqplus.lua`) and RQ's own
scripts as the installed rq has them (each a function named ``rq_<SHA1 of its body>``). Its name
changes with its content, so workers of two rqplus (or rq) versions run side by side during an
upgrade, each calling its own library. On the clients of :func:`with_functions` (those of every
rqplus entry point) RQ's ``register_script(body)`` calls that function instead of EVALSHA.

A call whose function Redis lacks loads the library and calls again, once, when the user may load
it (e.g. the default user of a Redis without ACLs); else it raises
:class:`~rqplus.exceptions.LibraryError` naming the fix: ``rqplus check --install`` with an admin
user. A pipeline cannot do that (inside MULTI/EXEC a missing function fails at EXEC, after the
other commands ran), so the library is checked before a call is queued on one: at most once per
``PIPELINE_CHECK_INTERVAL`` per connection pool. On Redis < 7.0, which has no functions, the same
Lua runs by EVALSHA (EVAL on a pipeline), as rqplus did before.

Usage::

    from rqplus.functions import rqplus_library, with_functions
    rqplus_library().install(admin)          # what `rqplus check --install` does
    redis = with_functions(Redis(port=6379))  # RQ's scripts on this client run as FCALL
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import cache, cached_property, lru_cache
from types import SimpleNamespace
from typing import Any, NamedTuple, TypeVar
from weakref import WeakKeyDictionary

from redis import ConnectionPool, Redis
from redis.client import Pipeline
from redis.exceptions import NoPermissionError, NoScriptError, ResponseError
from rq.utils import as_text

from rqplus.exceptions import LibraryError
from rqplus.lua import FUNCTIONS, HELPERS, source

#: Seconds a pipeline relies on the last check that a library is loaded, per connection pool.
PIPELINE_CHECK_INTERVAL = 1.0
#: The function every library has: returns the library's name (read only; rqplus checks with it).
VERSION = "version"
#: Where the docs tell an operator how to install a library.
INSTALL_HINT = "run `rqplus check --install` with an admin user (docs/security.md, \"Function library\")"
_EVAL = "eval"  # the mode of a pool whose Redis has no functions (< 7.0)
R = TypeVar("R", bound=Redis)


class Function(NamedTuple):
    """One function of a library: its Lua (KEYS and ARGV as in a script), whether it only reads
    (``no-writes``: FCALL_RO, and FUNCTION KILL may stop it), whether it uses the library's helpers."""

    body: str
    read_only: bool = False
    helpers: bool = True


def _says(error: Exception, words: str) -> bool:
    return words in str(error).lower()


class Library:
    """A Redis function library: named ``<prefix>_<hash of its Lua>``, each function
    ``<library name>_<function>``; ``helpers`` is Lua every function sees (locals loaded once).

    Usage: ``Library("myapp", {"one": Function("return 1")}).call(redis, "one")  # -> 1``
    """

    def __init__(self, prefix: str, functions: Mapping[str, Function], helpers: str = "") -> None:
        for name in (prefix, *functions):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} cannot name a Redis function: letters, digits and _ only")
        if VERSION in functions:
            raise ValueError(f"{VERSION!r} is the function every library has: name yours otherwise")
        self.prefix, self.helpers, self.functions = prefix, helpers, dict(functions)
        content = json.dumps([helpers, sorted((name, *function) for name, function in self.functions.items())])
        self.name = f"{prefix}_{hashlib.sha1(content.encode()).hexdigest()[:12]}"
        self._modes: WeakKeyDictionary[ConnectionPool, float | str] = WeakKeyDictionary()

    def function_name(self, function: str) -> str:
        """The name Redis knows ``function`` by (``KeyError`` for one the library lacks)."""
        if function != VERSION and function not in self.functions:
            raise KeyError(f"library {self.prefix} has no function {function!r}")
        return f"{self.name}_{function}"

    @cached_property
    def code(self) -> str:
        """The library as ``FUNCTION LOAD`` takes it."""
        lines = [f"#!lua name={self.name}", self.helpers,
                 "local function register(name, flags, callback)",
                 "  redis.register_function{function_name = name, callback = callback, flags = flags}",
                 "end",
                 f"register('{self.function_name(VERSION)}', {{'no-writes'}}, function() return '{self.name}' end)"]
        for name, function in self.functions.items():
            flags = "{'no-writes'}" if function.read_only else "{}"
            lines += [f"register('{self.function_name(name)}', {flags}, function(KEYS, ARGV)", function.body, "end)"]
        return "\n".join(lines) + "\n"

    @lru_cache(maxsize=None)  # noqa: B019 -- one entry per function of a library that lives as long as the process
    def fallback(self, function: str) -> tuple[str, str]:
        """``function`` as a script for Redis < 7.0 (helpers first when it uses them), and its SHA1."""
        spec = self.functions[function]
        script = f"{self.helpers}\n{spec.body}" if spec.helpers else spec.body
        return script, hashlib.sha1(script.encode()).hexdigest()

    def call(self, client: Redis | Pipeline, function: str, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        """Run ``function`` with ``keys`` and ``args`` (FCALL, FCALL_RO for a read-only one) and return
        its reply; on a pipeline, queue it and return the pipeline. Loads the library first if Redis
        lacks it and the user may; see the module's docstring.

        Usage: ``library.call(redis, "refill", [queue_key, window, counts], [backlog, prefix, job_id])``
        """
        command = "FCALL_RO" if self.functions[function].read_only else "FCALL"
        name, pool = self.function_name(function), client.connection_pool
        mode = self._modes.get(pool)
        if isinstance(client, Pipeline):
            if mode is None or (mode != _EVAL and time.monotonic() - mode > PIPELINE_CHECK_INTERVAL):
                mode = self._check(Redis(connection_pool=pool))
            if mode == _EVAL:
                return client.eval(self.fallback(function)[0], len(keys), *keys, *args)
            return client.execute_command(command, name, len(keys), *keys, *args)
        if mode != _EVAL:
            try:
                return client.execute_command(command, name, len(keys), *keys, *args)
            except ResponseError as error:
                if not (_says(error, "function not found") or _says(error, "unknown command")):
                    raise
            if self._check(client) != _EVAL:
                return client.execute_command(command, name, len(keys), *keys, *args)
        script, sha = self.fallback(function)
        try:
            return client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(script, len(keys), *keys, *args)

    def _check(self, connection: Redis) -> float | str:
        """Make sure Redis has this library (load it if missing and allowed); remember for the pool
        when that was seen, or that this Redis has no functions."""
        try:
            connection.execute_command("FCALL_RO", self.function_name(VERSION), 0)
            mode: float | str = time.monotonic()
        except ResponseError as error:
            if _says(error, "unknown command"):
                mode = _EVAL
            elif _says(error, "function not found"):
                self.install(connection)
                mode = time.monotonic()
            elif isinstance(error, NoPermissionError):
                raise LibraryError(f"Redis user {_user(connection)} may not call Redis functions: grant it "
                                   f"+fcall +fcall_ro (see deploy/users.acl): {error}") from error
            else:
                raise
        self._modes[connection.connection_pool] = mode
        return mode

    def install(self, connection: Redis, replace: bool = False) -> bool:
        """Load the library (``FUNCTION LOAD``); True if it was loaded now, False if Redis had it.

        Raises :class:`~rqplus.exceptions.LibraryError` when the user may not load libraries.

        Usage: ``rqplus_library().install(admin_redis)``
        """
        try:
            connection.function_load(self.code, replace=replace)
        except NoPermissionError as error:
            raise LibraryError(f"Redis has no function library {self.name} and user {_user(connection)} may not "
                               f"load it (FUNCTION LOAD): {INSTALL_HINT}") from error
        except ResponseError as error:
            if _says(error, "already exists"):
                return False
            raise
        return True

    def installed(self, connection: Redis) -> bool | None:
        """Whether Redis has this library; None for a Redis without functions (< 7.0).

        Usage: ``rqplus_library().installed(redis)``
        """
        try:
            connection.execute_command("FCALL_RO", self.function_name(VERSION), 0)
        except ResponseError as error:
            if _says(error, "unknown command"):
                return None
            if _says(error, "function not found"):
                return False
            raise
        return True

    def others(self, connection: Redis) -> list[str]:
        """The other versions of this library that Redis holds (``FUNCTION LIST``), by name.

        Usage: ``rqplus_library().others(admin_redis)  # -> ['rqplus_0123456789ab']``
        """
        found = connection.function_list(library=f"{self.prefix}_{'?' * 12}")
        names = [as_text(dict(zip(entry[0::2], entry[1::2]))[b"library_name"]) for entry in found]
        return sorted(name for name in names if name != self.name)

    def delete(self, connection: Redis, name: str) -> None:
        """Delete library ``name``, another version of this one (``FUNCTION DELETE``).

        Usage: ``library.delete(admin_redis, "rqplus_0123456789ab")``
        """
        if not re.fullmatch(rf"{self.prefix}_[0-9a-f]{{12}}", name):
            raise ValueError(f"{name!r} is not a version of library {self.prefix}")
        connection.function_delete(name)


def _user(connection: Redis) -> str:
    return connection.connection_pool.connection_kwargs.get("username") or "default"


def rq_function(script: str | bytes) -> str:
    """The name of the function holding one of RQ's scripts: ``rq_<SHA1 of its body>``."""
    return f"rq_{hashlib.sha1(script if isinstance(script, bytes) else script.encode()).hexdigest()}"


def rq_script_constants() -> dict[str, str]:
    """RQ's scripts that its modules keep as ``*_SCRIPT`` strings, by name (read from the installed rq).

    Usage: ``rq_script_constants()["RELEASE_LOCK_SCRIPT"]``
    """
    from rqplus.compat import RQ_SCRIPT_MODULES

    return {name: value for module in RQ_SCRIPT_MODULES for name, value in vars(importlib.import_module(module)).items()
            if name.endswith("_SCRIPT") and isinstance(value, str)}


def queue_empty_scripts() -> list[str]:
    """The scripts RQ's ``Queue.empty`` builds (each names its job class' key prefix), for RQ's and
    rqplus's job classes: read by running it against a stand-in that keeps what it registers.

    Usage: ``queue_empty_scripts()``
    """
    from rq.job import Job as RQJob

    from rqplus.job import Job
    from rqplus.queue import Queue

    # RQ's own empty, as rqplus.Queue inherits it: `rq.Queue` itself may be rqplus.Queue by now
    # (RQ's drop-in suite substitutes it at the source)
    stock_empty = Queue.__base__.empty
    registered: list[str | bytes] = []
    capture = SimpleNamespace(register_script=lambda body: registered.append(body) or (lambda **_: 0))
    for job_class in (RQJob, Job):
        stand_in = SimpleNamespace(job_class=job_class, connection=capture, key="rq:queue:")
        stock_empty(stand_in)
    return sorted({as_text(body) for body in registered})


def rq_scripts() -> list[str]:
    """Every Lua script RQ runs through ``register_script``: :func:`rq_script_constants` and
    :func:`queue_empty_scripts`.

    Usage: ``len(rq_scripts())  # -> 9 on rq 3.0``
    """
    return sorted({*rq_script_constants().values(), *queue_empty_scripts()})


@cache
def rqplus_library() -> Library:
    """rqplus's function library: its own functions and RQ's scripts (see the module's docstring).

    Usage: ``rqplus_library().name  # -> 'rqplus_1f0c...'``
    """
    functions = {name: Function(source(name), read_only) for name, read_only in FUNCTIONS.items()}
    functions.update({rq_function(body): Function(body, helpers=False) for body in rq_scripts()})
    return Library("rqplus", functions, helpers=source(HELPERS))


@lru_cache(maxsize=256)
def _rq_function_of(script: str | bytes) -> str | None:
    function = rq_function(script)
    return function if function in rqplus_library().functions else None


class FunctionScript:
    """Stands in for redis-py's ``Script`` for one of RQ's scripts: calls its function in rqplus's
    library (``keys``, ``args`` and ``client``, a pipeline too, as ``Script.__call__`` takes them)."""

    def __init__(self, registered_client: Redis, script: str | bytes, function: str) -> None:
        self.registered_client, self.script, self.function = registered_client, script, function
        self.sha = function.removeprefix("rq_")

    def __call__(self, keys: Iterable[Any] | None = None, args: Iterable[Any] | None = None,
                 client: Redis | Pipeline | None = None) -> Any:
        return rqplus_library().call(self.registered_client if client is None else client, self.function,
                                     list(keys or ()), list(args or ()))


class FunctionsMixin:
    """Mixed into a Redis client class: RQ's scripts run as functions of rqplus's library."""

    # RQ change (on redis-py's client, for RQ's callers): a script of RQ's that rqplus's library
    # holds is called with FCALL (RQ: EVALSHA, which needs the EVAL right); any other as before.
    def register_script(self, script: str | bytes) -> Any:
        function = _rq_function_of(script)
        if function is None:
            return super().register_script(script)  # type: ignore[misc]
        return FunctionScript(self, script, function)  # type: ignore[arg-type]


class FunctionsRedis(FunctionsMixin, Redis):
    """``redis.Redis`` whose RQ scripts run as functions of rqplus's library (see :func:`with_functions`)."""


@cache
def _functions_class(cls: type[Redis]) -> type[Redis]:
    if cls is Redis:
        return FunctionsRedis
    return type(f"{cls.__name__}WithFunctions", (FunctionsMixin, cls), {"__module__": cls.__module__})


def with_functions(connection: R) -> R:
    """``connection`` itself, its class made a subclass that runs RQ's scripts as functions of
    rqplus's library (see the module's docstring); nothing else changes. The class, not the
    instance, carries it, so clients RQ re-creates from it (its scheduler, its worker pool:
    ``connection.__class__(...)``) keep it.

    Usage: ``Queue("emails", connection=with_functions(redis))`` (rqplus.Queue does it itself)
    """
    if connection is not None and not isinstance(connection, FunctionsMixin):
        connection.__class__ = _functions_class(type(connection))
    return connection


def library_named(spec: str) -> Library:
    """The library ``spec`` names: ``module`` (its ``FUNCTIONS``) or ``module:attribute``.

    Usage: ``library_named("tasks.payments")``
    """
    module, _, attribute = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), attribute or "FUNCTIONS")
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{spec!r} names no function library: {error}") from None
    if not isinstance(found, Library):
        raise ValueError(f"{spec!r} is a {type(found).__name__}, not a rqplus.functions.Library")
    return found


def install(connection: Redis, libraries: Sequence[Library], prune: bool = False) -> list[str]:
    """Load ``libraries`` into Redis (``FUNCTION LOAD``), and with ``prune`` delete their other
    versions; returns what was done, a line each. Needs a user allowed FUNCTION LOAD and LIST (and
    DELETE to prune): ``rqplus-installer`` of deploy/users.acl.

    Usage: ``install(admin_redis, [rqplus_library(), library_named("tasks.payments")])``
    """
    lines = []
    for library in libraries:
        if library.installed(connection) is None:
            return ["Redis has no functions (it is older than 7.0): rqplus runs its Lua by EVALSHA, nothing to load"]
        loaded = library.install(connection)
        count = len(library.functions)
        done = "loaded" if loaded else "already loaded"
        lines.append(f"{library.name}: {done} ({count} function{'s' * (count != 1)})")
        others = library.others(connection)
        for name in others if prune else ():
            library.delete(connection, name)
            lines.append(f"{name}: deleted (--prune)")
        if others and not prune:
            lines.append(f"{library.prefix}: other versions kept: {', '.join(others)} (delete them with --prune once "
                         "no worker of those versions runs)")
    return lines
