"""Reading pickles without running what an attacker put in them.

RQ's default serializer is pickle, and unpickling runs code: a forged job whose arguments carry a
``__reduce__`` runs it the moment a worker reads the job, before any check could look at the
function name. An rqplus worker therefore reads pickles with :class:`SafePickleSerializer`, which
builds only plain data, a fixed list of harmless standard classes (:data:`SAFE_GLOBALS`), classes
defined in allowed job modules (``RQPLUS_JOB_MODULES``, resolved as :mod:`rqplus.allowlist`
resolves job functions) and the classes named in ``RQPLUS_PICKLE_CLASSES``. Any other class or
function named in a pickle is refused before it is imported or called: the job fails with
:class:`rqplus.exceptions.UnsafePickleError`. Every load goes through :mod:`rqplus.unpickling`,
which also keeps a pickle from changing any class or object that existed before it, and bounds
what it costs. It writes pickles exactly as RQ does, so producers keep RQ's default serializer and
existing jobs keep working.

Readers that must look at any job without failing on it (the dashboard, the bulk requeue's
checks) use :class:`SafeSerializer` instead: it reads JSON and pickles alike, and turns every
class or function a pickle names outside :data:`SAFE_GLOBALS` into a :class:`Withheld`
placeholder, never importing it; the same engine, the same rules.

Usage::

    rqplus.Worker(["emails"], connection=redis)   # uses it instead of RQ's pickle, automatically
    SafePickleSerializer.loads(pickle.dumps({"when": datetime.now()}))
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
from typing import Any

from rq.serializers import DefaultSerializer, JSONSerializer, resolve_serializer

from rqplus.allowlist import allowed_modules, in_allowed_module, resolve_class
from rqplus.exceptions import ForbiddenJobError, UnsafePickleError
from rqplus.unpickling import SAFE_GLOBALS, loads  # noqa: F401 -- SAFE_GLOBALS: documented here too

#: Environment variable naming further classes (``module.Class``, comma-separated) a worker may unpickle.
PICKLE_CLASSES_ENV = "RQPLUS_PICKLE_CLASSES"


def job_class(module: str, name: str) -> Any:
    """The class a worker builds for a pickle naming ``module.name`` (beyond :data:`SAFE_GLOBALS`):
    one listed in ``$RQPLUS_PICKLE_CLASSES``, or one defined in an allowed module (found without
    stepping through any other module); else ``UnsafePickleError``, with nothing imported.

    Usage: ``job_class("tasks.payments", "Settings")``
    """
    modules = allowed_modules()
    if (module, name) in extra_classes():
        return getattr(importlib.import_module(module), name)
    if in_allowed_module(module, modules):
        try:
            return resolve_class(module, name, modules)
        except (ForbiddenJobError, ImportError) as error:
            raise UnsafePickleError(f"the pickle names {module}.{name}: {error}") from None
    raise UnsafePickleError(f"the pickle names {module}.{name}, which is not loaded: only plain data, "
                            f"standard data classes and classes defined in allowed modules "
                            f"({', '.join(modules) or 'none'}) are; list further classes in {PICKLE_CLASSES_ENV}")


def extra_classes() -> frozenset[tuple[str, str]]:
    """The ``(module, class)`` pairs of ``$RQPLUS_PICKLE_CLASSES`` (``mod.Class,other.mod.Class``).

    Usage: ``extra_classes() == frozenset({("pandas.core.frame", "DataFrame")})``
    """
    names = (name.strip() for name in os.environ.get(PICKLE_CLASSES_ENV, "").split(","))
    return frozenset(tuple(name.rsplit(".", 1)) for name in names if "." in name)  # type: ignore[misc]


class SafePickleSerializer(DefaultSerializer):
    """Writes pickles as RQ's default serializer does; reads them with the worker's restricted unpickler.

    Usage: ``rq worker -w rqplus.Worker ...`` uses it when RQ's pickle is configured (the default)
    """

    @staticmethod
    def loads(data: bytes) -> Any:
        """The objects in ``data``; ``UnsafePickleError`` if it names anything not allowed (nothing of it runs).

        Usage: ``SafePickleSerializer.loads(pickle.dumps([1, 2]))``
        """
        return loads(data, job_class)


def worker_serializer(serializer: Any = None) -> Any:
    """The serializer an rqplus worker reads with: :class:`SafePickleSerializer` in place of RQ's
    pickle (given as None, ``DefaultSerializer``, ``pickle`` or its dotted name), else ``serializer``
    as given (JSON needs no guard; a custom serializer is its author's responsibility).

    Usage: ``worker_serializer(None) is SafePickleSerializer``
    """
    chosen = resolve_serializer(serializer)
    if chosen is DefaultSerializer or chosen is pickle:
        return SafePickleSerializer
    return chosen


# --- reading without building anything foreign: the dashboard and the bulk requeue -----------

class _WithheldType(type):
    def __repr__(cls) -> str:
        return f"<not loaded: {cls.origin}>"


class Withheld(metaclass=_WithheldType):
    """Stands in for an object of a class (or a function) the dashboard refuses to import.

    Whatever the pickle passes to it (constructor arguments, state) is dropped unseen, so nothing
    of it, secrets included, can be shown either.
    """

    origin = "?"

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


def placeholder(module: str, name: str) -> type:
    """A :class:`Withheld` class standing in for ``module.name``, which is not imported.

    Usage: ``placeholder("pathlib", "PosixPath")  # <not loaded: pathlib.PosixPath>``
    """
    return _WithheldType(name, (Withheld,), {"origin": f"{module}.{name}", "__module__": module, "__qualname__": name})


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
        return loads(data, placeholder)


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
