"""Reading pickles without running what an attacker put in them.

RQ's default serializer is pickle, and unpickling runs code: a forged job whose arguments carry a
``__reduce__`` runs it the moment a worker reads the job, before any check could look at the
function name. An rqplus worker therefore reads pickles with :class:`SafePickleSerializer`, which
builds only plain data, a fixed list of harmless standard classes (:data:`SAFE_GLOBALS`), classes
defined in allowed job modules (``RQPLUS_JOB_MODULES``, resolved as :mod:`rqplus.allowlist`
resolves job functions) and the classes named in ``RQPLUS_PICKLE_CLASSES``. Any other class or
function named in a pickle is refused before it is imported or called: the job fails with
:class:`rqplus.exceptions.UnsafePickleError`. It writes pickles exactly as RQ does, so producers
keep RQ's default serializer and existing jobs keep working.

Usage::

    rqplus.Worker(["emails"], connection=redis)   # uses it instead of RQ's pickle, automatically
    SafePickleSerializer.loads(pickle.dumps({"when": datetime.now()}))
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from typing import Any

from rq.serializers import DefaultSerializer, resolve_serializer

from rqplus.allowlist import allowed_modules, in_allowed_module, resolve_class
from rqplus.exceptions import ForbiddenJobError, UnsafePickleError

#: Environment variable naming further classes (``module.Class``, comma-separated) a worker may unpickle.
PICKLE_CLASSES_ENV = "RQPLUS_PICKLE_CLASSES"

#: Standard classes whose construction from pickled arguments runs nothing but plain-data code, and
#: builds nothing much larger than the pickle: not ``range`` (``list(range(10**12))``), ``bytes`` or
#: ``bytearray`` (``bytes(10**12)``), which RQ's protocol-5 pickles never name anyway.
SAFE_GLOBALS = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "slice"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "int"), ("builtins", "float"),
    ("builtins", "str"), ("builtins", "bool"), ("collections", "OrderedDict"), ("collections", "deque"), ("collections", "Counter"),
    ("collections", "defaultdict"), ("collections", "ChainMap"),
    ("datetime", "date"), ("datetime", "time"), ("datetime", "datetime"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID"),
    ("uuid", "SafeUUID"), ("_codecs", "encode"),  # protocol 2 writes bytes as _codecs.encode(text, "latin1")
})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds :data:`SAFE_GLOBALS` and hands every other global to :meth:`refused`.

    Subclasses decide what a refused global becomes (the worker raises; the dashboard shows a placeholder).
    """

    # The one door through which a pickle reaches code (GLOBAL, STACK_GLOBAL, INST and OBJ all
    # come here): what it returns is what REDUCE, NEWOBJ and BUILD may call.
    def find_class(self, module: str, name: str) -> Any:
        # protocols 0-2 may name Python 2 modules (__builtin__.set); judged by their Python 3 names
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        return self.refused(module, name)

    def refused(self, module: str, name: str) -> Any:
        """What a global outside :data:`SAFE_GLOBALS` becomes; raises ``UnsafePickleError`` here.

        Usage: override in a subclass to build a placeholder instead
        """
        raise UnsafePickleError(f"the pickle names {module}.{name}, which is not loaded: only plain data, "
                                f"standard data classes and classes of allowed modules are")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("the pickle holds a persistent id, which is never loaded")


class _JobUnpickler(RestrictedUnpickler):
    # Classes defined in allowed job modules (found without stepping through any other module)
    # and the classes the operator listed are built; anything else is refused.
    def __init__(self, file: io.BytesIO, modules: tuple[str, ...], extra: frozenset[tuple[str, str]]) -> None:
        super().__init__(file)
        self.modules, self.extra = modules, extra

    def refused(self, module: str, name: str) -> Any:
        if (module, name) in self.extra:
            return super(RestrictedUnpickler, self).find_class(module, name)
        if in_allowed_module(module, self.modules):
            try:
                return resolve_class(module, name, self.modules)
            except (ForbiddenJobError, ImportError) as error:
                raise UnsafePickleError(f"the pickle names {module}.{name}: {error}") from None
        raise UnsafePickleError(f"the pickle names {module}.{name}, which is not loaded: only plain data, "
                                f"standard data classes and classes defined in allowed modules "
                                f"({', '.join(self.modules) or 'none'}) are; list further classes in "
                                f"{PICKLE_CLASSES_ENV}")


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
        return _JobUnpickler(io.BytesIO(data), allowed_modules(), extra_classes()).load()


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
