"""The one unpickling engine of rqplus: a load builds data, never changes code, and costs little.

Restricting the names a pickle may import is not enough. The ``BUILD`` opcode applied to a class
sets its attributes, ``SETITEMS`` fills whatever sits below it on the stack, and a class whose
constructor returns an object that already exists (an ``Enum`` member, ``timezone.utc``) hands
that object to them: a pickle naming only harmless classes could change them for the rest of
the process. And allowed constructors can be made to burn CPU (``int(Decimal("1e1000000"))``:
25 s from 53 bytes) or memory (a memo-shared tuple of depth 40 is 2**40 nodes to hash or print).

So every load goes through :func:`loads`, a pure-Python unpickler whose opcodes enforce:

* **Mutation only of what this load made.** ``BUILD``, ``SETITEM(S)``, ``APPEND(S)`` and
  ``ADDITEMS`` apply only to objects this load created and that are certainly new: literal
  containers, and results of constructors whose ``__new__`` is ``object.__new__`` or a builtin
  container's. Never to a class, a module, a function, or a constructor result that may be
  shared (an ``Enum`` member, ``timezone.utc``, a cached small value). ``BUILD`` state names no
  dunder attribute (``__class__``, ``__dict__``...).
* **Names are constructors.** Only a global found by name is ever called (``REDUCE``, ``NEWOBJ``,
  ``OBJ``, ``INST``), each with arguments checked for it first. A class found by name may also
  be data (a ``defaultdict``'s factory, an argument that is a class): inert unless code calls it,
  and never changed. A function found by name (only ``_codecs.encode`` and
  ``copyreg._reconstructor``, for old protocols) is only called, never part of the result.
  What else a name may find is the caller's rule (``find_class``).
* **Bounded cost.** The pickle's length (:func:`max_pickle_bytes`), nesting depth
  (:data:`MAX_DEPTH`), the size it expands to when memo-shared objects are counted at each
  reference (:data:`EXPANSION_BASE` + :data:`EXPANSION_PER_BYTE` per byte of pickle), keys of one
  hash in one dict or set (:data:`MAX_EQUAL_HASHES`), and every argument of every standard
  constructor before it is called (:data:`MAX_DIGITS` digits and :data:`MAX_EXPONENT` exponent
  for ``Decimal``, plain bounded ``Fraction`` and ``int`` texts, no ``int()`` of a ``Decimal``...).

Refusals raise :class:`rqplus.exceptions.UnsafePickleError` naming the rule. A pickle made of
plain data only (no global, no memo reference, at most :data:`FAST_PATH_BYTES` bytes) takes a fast
path: a scan of its opcodes, then C's ``pickle.loads``, which can then do nothing the rules above
would refuse (see :func:`plain_pickle`).

Usage::

    from rqplus.unpickling import loads
    from rqplus.serializers import job_class
    loads(pickle.dumps({"a": [1, 2]}), find_class=job_class)  # classes of allowed modules too
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import copyreg
import importlib
import io
import os
import pickle
import re
import struct
import sys
import zlib
from collections import ChainMap, Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import EnumType
from fractions import Fraction
from types import BuiltinMethodType
from typing import Any
from uuid import UUID, SafeUUID

from rqplus.defaults import MAX_PAYLOAD_BYTES
from rqplus.exceptions import UnsafePickleError

#: Environment variable giving the longest pickle a load accepts, in bytes; unset, the largest
#: job rqplus.Queue enqueues (``RQPLUS_MAX_PAYLOAD_BYTES``, 1 MiB by default) is.
MAX_PICKLE_BYTES_ENV = "RQPLUS_MAX_PICKLE_BYTES"
#: Deepest nesting of containers and objects in a result.
MAX_DEPTH = 100
#: Size units a result may grow by beyond its pickle's own length: each reference to an object
#: already built (memo, DUP) counts that object's whole size again. A unit is an object, or 16
#: bytes of text.
EXPANSION_BASE = 65_536
EXPANSION_PER_BYTE = 16
#: Most keys (or set elements) of one hash value in one dict or set: more is a hash flood.
MAX_EQUAL_HASHES = 128
#: Most digits in a number given as text (``int``, ``Fraction``, a ``Decimal``'s coefficient).
MAX_DIGITS = 1000
#: Largest exponent (either sign) of a ``Decimal``: ``int()`` of one then has at most 2,000 digits.
MAX_EXPONENT = 1000
#: Longest integer in binary form (``LONG4``), in bytes (8,192 bits, 2,467 digits).
MAX_INT_BYTES = 1024
#: Largest pickle the C unpickler may read directly, when :func:`plain_pickle` admits it.
FAST_PATH_BYTES = 1024

#: Standard classes (and the two helper functions old protocols name) whose construction from
#: pickled arguments runs nothing but plain-data code, with each argument checked before the call
#: (see ``_CHECKS``: ``bytes`` and ``bytearray`` of bytes or text, never of a number: not
#: ``bytes(10**12)``); not ``range``.
SAFE_GLOBALS = frozenset({
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "slice"),
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "int"), ("builtins", "float"),
    ("builtins", "str"), ("builtins", "bool"), ("builtins", "object"), ("builtins", "bytes"), ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
    ("collections", "deque"), ("collections", "Counter"), ("collections", "defaultdict"), ("collections", "ChainMap"),
    ("datetime", "date"), ("datetime", "time"), ("datetime", "datetime"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("fractions", "Fraction"), ("uuid", "UUID"),
    ("uuid", "SafeUUID"),
    ("_codecs", "encode"),          # protocol 2 writes bytes as _codecs.encode(text, "latin1")
    ("copyreg", "_reconstructor"),  # protocols 0-1 write an instance as _reconstructor(cls, object, None)
})

# __new__ methods that always return a new object: what a load builds with them is its own
_NEW_OBJECTS = frozenset({object.__new__, dict.__new__, list.__new__, set.__new__, bytearray.__new__, deque.__new__})


def max_pickle_bytes() -> int:
    """The longest pickle a load accepts: ``$RQPLUS_MAX_PICKLE_BYTES``, else
    ``$RQPLUS_MAX_PAYLOAD_BYTES`` (a worker reads what a producer may enqueue), else 1 MiB; never
    less than :data:`FAST_PATH_BYTES`.

    Usage: ``max_pickle_bytes() == 1024 * 1024``
    """
    configured = os.environ.get(MAX_PICKLE_BYTES_ENV) or os.environ.get("RQPLUS_MAX_PAYLOAD_BYTES", MAX_PAYLOAD_BYTES)
    return max(int(configured), FAST_PATH_BYTES)


def inflated(stored: bytes) -> bytes:
    """A job's data field as RQ reads it (zlib-decompressed, else as stored), but never more than
    :func:`max_pickle_bytes` + 1 bytes: a forged field of 1 MB may inflate to gigabytes, and the
    load refuses anything over the limit anyway.

    Usage: ``inflated(redis.hget(job.key, "data"))``
    """
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(stored, max_pickle_bytes() + 1)
    except zlib.error:
        return stored
    if inflater.eof or inflater.unconsumed_tail:
        return data  # complete (trailing bytes ignored, as zlib.decompress does), or over the limit
    return stored  # a truncated stream, which zlib.decompress refuses: RQ then reads the field as stored


def python_name(module: str, name: str) -> tuple[str, str]:
    """``(module, name)`` as Python 3 names it: protocols 0-2 may say ``__builtin__.set``.

    Usage: ``python_name("__builtin__", "set") == ("builtins", "set")``
    """
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def loads(data: bytes, find_class: Callable[[str, str], Any]) -> Any:
    """The object ``data`` pickles, built under the rules of this module; ``UnsafePickleError``
    when it breaks one. ``find_class(module, name)`` gives the class a global names (Python 3
    names, see :func:`python_name`) or raises ``UnsafePickleError``; it is called only for
    names outside :data:`SAFE_GLOBALS`.

    Usage: ``loads(pickle.dumps([1, 2]), find_class=rqplus.serializers.job_class) == [1, 2]``
    """
    data = bytes(data)
    if len(data) > FAST_PATH_BYTES and len(data) > (limit := max_pickle_bytes()):
        raise _refuse(f"is over the {limit} byte limit ({len(data)} bytes read; {MAX_PICKLE_BYTES_ENV})")
    if plain_pickle(data):
        try:
            return pickle.loads(data)
        except Exception:  # malformed: the engine says how, as for any other pickle
            pass
    return _Engine(data, find_class).load()


# --- the fast path ----------------------------------------------------------------------------

_NO_ARG, _CONTAINER, _STOP = 1, 2, 3
_FIXED = 10      # + the argument's length
_PREFIXED = 20   # + the width of the length before the argument
_SCAN = [0] * 256  # 0: the opcode sends the pickle to the engine
for _op in (pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.EMPTY_TUPLE, pickle.MARK, pickle.POP,
            pickle.POP_MARK, pickle.MEMOIZE, pickle.APPEND, pickle.APPENDS, pickle.SETITEM, pickle.SETITEMS,
            pickle.ADDITEMS):
    _SCAN[_op[0]] = _NO_ARG
for _op in (pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.EMPTY_SET, pickle.LIST, pickle.DICT, pickle.TUPLE,
            pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET):
    _SCAN[_op[0]] = _CONTAINER
_SCAN[pickle.STOP[0]] = _STOP
for _op, _width in ((pickle.PROTO, 1), (pickle.FRAME, 8), (pickle.BININT, 4), (pickle.BININT1, 1),
                    (pickle.BININT2, 2), (pickle.BINFLOAT, 8), (pickle.BINPUT, 1), (pickle.LONG_BINPUT, 4)):
    _SCAN[_op[0]] = _FIXED + _width
for _op, _width in ((pickle.LONG1, 1), (pickle.SHORT_BINUNICODE, 1), (pickle.SHORT_BINBYTES, 1),
                    (pickle.BINUNICODE, 4), (pickle.BINBYTES, 4), (pickle.BINUNICODE8, 8), (pickle.BINBYTES8, 8)):
    _SCAN[_op[0]] = _PREFIXED + _width


def plain_pickle(data: bytes) -> bool:
    """True when the C unpickler may read ``data`` directly: at most :data:`FAST_PATH_BYTES`
    bytes of protocol 2+ opcodes that push plain values (None, bools, ints of at most 255 bytes,
    floats, str, bytes) and build or fill containers, with no memo read (``GET``) nor ``DUP``,
    and at most :data:`MAX_DEPTH` containers, up to its ``STOP``.

    Such a load names no global, so it creates every mutable object it fills (``SETITEM`` on
    anything else raises); each object is referenced once, so the result is a tree no larger than
    the pickle (nothing to expand), as deep as its containers at most; an int is at most 2,040
    bits; and a dict of :data:`FAST_PATH_BYTES` bytes cannot hold :data:`MAX_EQUAL_HASHES` keys
    of one hash (each needs 9+ bytes: the hashes of smaller values differ). So it builds exactly
    what the engine would, and the engine refuses nothing of it.

    Usage: ``plain_pickle(pickle.dumps({"priority": 5})) is True``
    """
    end = len(data)
    if end > FAST_PATH_BYTES:
        return False
    position = containers = 0
    scan = _SCAN
    while position < end:
        kind = scan[data[position]]
        position += 1
        if kind == _NO_ARG:
            continue
        if kind == _PREFIXED + 1:
            if position == end:
                return False
            position += 1 + data[position]
        elif kind > _PREFIXED:
            width = kind - _PREFIXED
            position += width + int.from_bytes(data[position:position + width], "little")
        elif kind > _FIXED:
            position += kind - _FIXED
        elif kind == _CONTAINER:
            containers += 1
            if containers > MAX_DEPTH:
                return False
        elif kind == _STOP:
            return True
        else:
            return False
    return False  # no STOP: truncated


# --- the engine -------------------------------------------------------------------------------

def _refuse(reason: str) -> UnsafePickleError:
    return UnsafePickleError(f"the pickle {reason}; nothing of it was used")


def _what(obj: Any) -> str:
    if isinstance(obj, type):
        return f"class {obj.__module__}.{obj.__qualname__}"
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__} object".removeprefix("builtins.")


def _dunder(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("__") and key.endswith("__")


def _units(obj: Any) -> int:
    # the size of a value that holds nothing else: 1, and 1 per 16 bytes of text
    kind = type(obj)
    return 1 + (len(obj) >> 4) if kind is str or kind is bytes else 1


_NAMED, _FRESH, _WALK = 1, 2, 4
_DEPTH, _DEPTHS = 3, 127  # the depth's shift and mask (MAX_DEPTH fits)
_SIZE = 10


def _pack(size: int, depth: int, named: bool, fresh: bool, walk: bool) -> int:
    return size << _SIZE | depth << _DEPTH | walk << 2 | fresh << 1 | named


class _Engine(pickle._Unpickler):
    """The pure-Python unpickler with each opcode that could reach code or cost much overridden."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, data: bytes, find_class: Callable[[str, str], Any]) -> None:
        # pickle._Unpickler's own __init__ and load() read through an _Unframer; the pickle is in
        # memory here, so the engine reads it directly (FRAME is only a hint of what follows)
        self._data = data
        self._length = len(data)
        self.memo: dict[int, Any] = {}
        self.encoding, self.errors, self.fix_imports, self.proto = "ASCII", "strict", True, 0
        self._find = find_class
        self.budget = EXPANSION_BASE + EXPANSION_PER_BYTE * len(data)
        # id -> measure (see _pack) of each object this load built, named or got from a constructor;
        # each such object is kept in ``alive`` until the load ends, so that its id stays its own
        self.measures: dict[int, int] = {}
        self.alive: list[Any] = []
        self.named: set[int] = set()    # ids of globals found by name: what may be called
        self.shared: set[int] = set()   # ids of fresh objects referenced again (memo, DUP)
        self.hashes: dict[int, dict[int, int]] = {}  # id of a dict or set -> hash -> keys of that hash
        self.filled_shared = False  # an object was filled after a second reference to it was taken

    def load(self) -> Any:
        stream = io.BytesIO(self._data)
        self.read, self.readline = stream.read, stream.readline
        self.metastack: list[list[Any]] = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        read, dispatch = self.read, self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                dispatch[key[0]](self)
        except pickle._Stop as stop:
            return stop.value

    def load_frame(self) -> None:
        self.read(8)
    dispatch[pickle.FRAME[0]] = load_frame

    # -- bookkeeping ---------------------------------------------------------------------------
    # A measure packs, in one int: the object's size (units: objects, and 16 bytes of text),
    # its depth, whether it is or holds a function found by name (not data), whether this load made
    # it new (the only objects it may fill) and whether it holds others (what _walk descends into).

    def measure(self, obj: Any) -> tuple[int, int, bool]:
        """``obj``'s size, depth and whether it is (or holds) a function found by name."""
        found = self.measures.get(id(obj))
        return (_units(obj), 0, False) if found is None else (found >> _SIZE, found >> _DEPTH & _DEPTHS, bool(found & _NAMED))

    def measure_all(self, items: Iterable[Any]) -> tuple[int, int, bool]:
        """The summed size, the deepest depth and whether any of ``items`` is or holds a function found by name."""
        size = depth = named = 0
        measures = self.measures
        for item in items:
            found = measures.get(id(item))
            if found is None:
                kind = type(item)
                size += 1 + (len(item) >> 4) if kind is str or kind is bytes else 1
            else:
                size += found >> _SIZE
                depth = max(depth, found >> _DEPTH & _DEPTHS)
                named |= found
        return size, depth, bool(named & _NAMED)

    def record(self, obj: Any, size: int, depth: int, named: bool = False, fresh: bool = False,
               walk: bool = False) -> Any:
        if depth > MAX_DEPTH:
            raise _refuse(f"nests deeper than {MAX_DEPTH} levels")
        key = id(obj)
        if key not in self.measures:
            self.alive.append(obj)
        self.measures[key] = _pack(size, depth, named, fresh, walk or fresh)
        return obj

    def is_fresh(self, obj: Any) -> bool:
        """True when this load made ``obj`` new: it may fill it."""
        return bool(self.measures.get(id(obj), 0) & _FRESH)

    def as_data(self, named: bool, where: str) -> None:
        if named:
            raise _refuse(f"puts a function it names {where}: such functions are only called")

    def container(self, obj: Any, items: Iterable[Any], fresh: bool) -> Any:
        size, depth, named = self.measure_all(items)
        if not isinstance(obj, tuple):
            self.as_data(named, f"in a {type(obj).__name__}")
        return self.record(obj, size + 1, depth + 1, named, fresh, walk=True)

    def reference(self, obj: Any) -> None:
        """A second reference to ``obj`` (memo read, DUP): its whole size counts again."""
        found = self.measures.get(id(obj))
        self.budget -= _units(obj) if found is None else found >> _SIZE
        if self.budget < 0:
            raise _refuse(f"refers to objects it already built so often that its result would exceed "
                          f"{EXPANSION_BASE} + {EXPANSION_PER_BYTE} x {self._length} size units")
        if found is not None and found & _FRESH:
            self.shared.add(id(obj))

    def check_keys(self, owner: int | None, keys: Iterable[Any]) -> None:
        """Refuse more than :data:`MAX_EQUAL_HASHES` keys of one hash in the dict or set ``owner``
        (None: a new one); text hashes are randomised, so only other keys are counted."""
        counts = None
        for key in keys:
            kind = type(key)
            if kind is str or kind is bytes:
                continue
            try:
                value = hash(key)
            except TypeError:
                continue  # unhashable: the insert itself raises
            if counts is None:
                counts = self.hashes.setdefault(owner, {}) if owner is not None else {}
            seen = counts[value] = counts.get(value, 0) + 1
            if seen > MAX_EQUAL_HASHES:
                raise _refuse(f"puts more than {MAX_EQUAL_HASHES} keys of one hash in one dict or set (a hash flood)")

    def fill(self, target: Any, items: list[Any], keys: list[Any], opcode: str) -> None:
        """Check that ``opcode`` may put ``items`` (``keys`` among them) into ``target``, and account for them."""
        key = id(target)
        old = self.measures.get(key, 0)
        if not old & _FRESH:
            raise _refuse(f"applies {opcode} to a {_what(target)} that this load did not create")
        size, depth, named = self.measure_all(items)
        if named:
            self.as_data(named, f"in a {type(target).__name__}")
        if keys:
            self.check_keys(key, keys)
        if key in self.shared:
            self.filling_shared(target, opcode)
        if depth >= old >> _DEPTH & _DEPTHS:
            if depth >= MAX_DEPTH:
                raise _refuse(f"nests deeper than {MAX_DEPTH} levels")
            old = old & ~(_DEPTHS << _DEPTH) | (depth + 1) << _DEPTH
        self.measures[key] = old + (size << _SIZE)

    def filling_shared(self, target: Any, opcode: str) -> None:
        # filling an object after a second reference to it was taken: only cycles do that. Its
        # size then counts at every reference (see _walk); one hashed by value would change hash.
        if type(target).__hash__ not in (None, object.__hash__):
            raise _refuse(f"applies {opcode} to a {_what(target)} after referring to it again; its hash would change")
        self.filled_shared = True

    # -- opcodes that build containers ---------------------------------------------------------

    def load_empty_list(self) -> None:
        self.append(self.record([], 1, 1, fresh=True))
    dispatch[pickle.EMPTY_LIST[0]] = load_empty_list

    def load_empty_dictionary(self) -> None:
        self.append(self.record({}, 1, 1, fresh=True))
    dispatch[pickle.EMPTY_DICT[0]] = load_empty_dictionary

    def load_empty_set(self) -> None:
        self.append(self.record(set(), 1, 1, fresh=True))
    dispatch[pickle.EMPTY_SET[0]] = load_empty_set

    def load_list(self) -> None:
        items = self.pop_mark()
        self.append(self.container(items, items, fresh=True))
    dispatch[pickle.LIST[0]] = load_list

    def load_dict(self) -> None:
        items = self.pop_mark()
        self.check_keys(None, items[0::2])
        built = {items[i]: items[i + 1] for i in range(0, len(items), 2)}
        self.append(self.container(built, items, fresh=True))
    dispatch[pickle.DICT[0]] = load_dict

    def load_frozenset(self) -> None:
        items = self.pop_mark()
        self.check_keys(None, items)
        self.append(self.container(frozenset(items), items, fresh=False))
    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def load_tuple(self) -> None:
        items = self.pop_mark()
        self.append(self.container(tuple(items), items, fresh=False))
    dispatch[pickle.TUPLE[0]] = load_tuple

    def load_tuple1(self) -> None:
        self.stack[-1] = self.container((self.stack[-1],), self.stack[-1:], fresh=False)
    dispatch[pickle.TUPLE1[0]] = load_tuple1

    def load_tuple2(self) -> None:
        self.stack[-2:] = [self.container(tuple(self.stack[-2:]), self.stack[-2:], fresh=False)]
    dispatch[pickle.TUPLE2[0]] = load_tuple2

    def load_tuple3(self) -> None:
        self.stack[-3:] = [self.container(tuple(self.stack[-3:]), self.stack[-3:], fresh=False)]
    dispatch[pickle.TUPLE3[0]] = load_tuple3

    def load_bytearray8(self) -> None:
        size, = struct.unpack("<Q", self.read(8))
        if size > self._length:
            raise _refuse(f"announces a bytearray of {size} bytes, longer than the pickle")
        self.append(self.record(bytearray(self.read(size)), 1 + (size >> 4), 0, fresh=True))
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    # -- opcodes that fill what is below them on the stack --------------------------------------

    def load_append(self) -> None:
        value = self.stack.pop()
        target = self.stack[-1]
        self.fill(target, [value], [], "APPEND")
        target.append(value)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self.fill(target, items, [], "APPENDS")
        extend = getattr(target, "extend", None)
        if extend is not None:
            extend(items)
        else:
            for item in items:
                target.append(item)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        target = self.stack[-1]
        self.fill(target, [key, value], [key], "SETITEM")
        target[key] = value
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self.fill(target, items, items[0::2], "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        self.fill(target, items, items, "ADDITEMS")
        if isinstance(target, set):
            target.update(items)
        else:
            for item in items:
                target.add(item)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if not self.is_fresh(target):
            raise _refuse(f"applies BUILD to a {_what(target)} that this load did not create")
        states = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        for part in states:
            if isinstance(part, dict):
                bad = next((key for key in part if not isinstance(key, str) or _dunder(key)), None)
                if bad is not None:
                    raise _refuse(f"sets attribute {bad!r} of a {_what(target)}: only plain names are set")
        self.fill(target, [state], [], "BUILD")
        setstate = getattr(target, "__setstate__", None)
        if setstate is not None:
            setstate(state)
            return
        slots = None
        if len(states) == 2:
            state, slots = states
        for part, what in ((state, "state"), (slots, "slot state")):
            if part is not None and not isinstance(part, dict):
                raise _refuse(f"gives a {_what(target)} a {what} that is a {_what(part)}, not a dict")
        if state:
            attributes = target.__dict__
            for key, value in state.items():
                attributes[sys.intern(key)] = value
        for key, value in (slots or {}).items():
            setattr(target, key, value)
    dispatch[pickle.BUILD[0]] = load_build

    # -- memo reads, numbers from text, what is never loaded --------------------------------------

    def load_dup(self) -> None:
        self.reference(self.stack[-1])
        self.append(self.stack[-1])
    dispatch[pickle.DUP[0]] = load_dup

    def load_int(self) -> None:
        line = self.number_line()
        self.append(False if line == b"00" else True if line == b"01" else int(line, 0))
    dispatch[pickle.INT[0]] = load_int

    def load_long(self) -> None:
        self.append(int(self.number_line().removesuffix(b"L"), 0))
    dispatch[pickle.LONG[0]] = load_long

    def load_float(self) -> None:
        self.append(float(self.number_line()))
    dispatch[pickle.FLOAT[0]] = load_float

    def number_line(self, longest: int = MAX_DIGITS + 8) -> bytes:
        line = self.readline()[:-1]
        if len(line) > longest:
            raise _refuse(f"writes a number of {len(line)} characters (at most {longest})")
        return line

    # protocol 0 writes memo indexes as text: bounded as the binary ones (4 bytes), so that no
    # index of a hash already in the memo can be written (a hash flood of the memo)
    def load_get(self) -> None:
        self.append(self.memo[self.memo_index()])
        self.reference(self.stack[-1])
    dispatch[pickle.GET[0]] = load_get

    def load_put(self) -> None:
        self.memo[self.memo_index()] = self.stack[-1]
    dispatch[pickle.PUT[0]] = load_put

    def memo_index(self) -> int:
        index = int(self.number_line(10))
        if not 0 <= index < 2**32:
            raise _refuse(f"writes memo index {index} (from 0 to 2**32 - 1)")
        return index

    def load_long4(self) -> None:
        size, = struct.unpack("<i", self.read(4))
        if size > MAX_INT_BYTES:
            raise _refuse(f"writes an int of {size} bytes (at most {MAX_INT_BYTES})")
        if size < 0:
            raise pickle.UnpicklingError("LONG pickle has negative byte count")
        self.append(pickle.decode_long(self.read(size)))
    dispatch[pickle.LONG4[0]] = load_long4

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse("holds a persistent id, which is never loaded")

    # -- names and constructors ----------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        module, name = python_name(module, name)
        found = _SAFE_OBJECTS.get((module, name))
        if found is None:
            found = self._find(module, name)
        self.named.add(id(found))
        return self.record(found, 1, 0, named=not isinstance(found, type))

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.construct(self.stack[-1], args, None, call=True)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self.construct(self.stack[-1], args, None, call=False)
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self.stack[-1] = self.construct(self.stack[-1], args, kwargs, call=False)
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_obj(self) -> None:
        args = self.pop_mark()
        cls = args.pop(0)
        self.instantiate(cls, args)
    dispatch[pickle.OBJ[0]] = load_obj

    def load_inst(self) -> None:
        module = self.readline()[:-1].decode("ascii")
        name = self.readline()[:-1].decode("ascii")
        cls = self.find_class(module, name)
        self.instantiate(cls, self.pop_mark())
    dispatch[pickle.INST[0]] = load_inst

    def instantiate(self, cls: Any, args: list[Any]) -> None:
        # as pickle's _instantiate: called with its arguments, or only made with __new__
        packed = self.container(tuple(args), args, fresh=False)
        call = bool(args) or not isinstance(cls, type) or hasattr(cls, "__getinitargs__")
        self.append(self.construct(cls, packed, None, call=call))

    def construct(self, func: Any, args: Any, kwargs: Any, call: bool) -> Any:
        """``func(*args)`` (``call``) or ``func.__new__(func, *args, **kwargs)``, once ``func`` is
        known to be a constructor this load found by name and its arguments passed its check."""
        opcode = "REDUCE" if call else "NEWOBJ"
        if id(func) not in self.named:
            raise _refuse(f"calls a {_what(func)} ({opcode}) that it did not name: only constructors it names are called")
        if not call and not isinstance(func, type):
            raise _refuse(f"creates an instance of {_what(func)} (NEWOBJ), which is not a class")
        if type(args) is not tuple or (kwargs is not None and (type(kwargs) is not dict
                                                              or not all(isinstance(k, str) for k in kwargs))):
            raise _refuse(f"passes {func!r} arguments that are not a tuple (and a dict of names)")
        _check_for(func)(self, func, args, kwargs or {})
        size, depth, named = self.measure_all((args, kwargs) if kwargs else (args,))
        if not call:
            built = func.__new__(func, *args, **(kwargs or {}))
            return self.record(built, size + 1, depth, fresh=type(built) is func and _makes_new(func))
        built = func(*args)
        if func is copyreg._reconstructor:  # base.__new__(cls, ...): new, unless a builtin caches its own
            cls, base = args[:2]
            fresh = type(built) is cls and (cls is not base or base.__new__ in _NEW_OBJECTS)
        else:
            fresh = (type(built) is func and type(func).__call__ is type.__call__  # type: ignore[comparison-overlap]
                     and _makes_new(func))
        return self.record(built, size + 1, depth, fresh=fresh)

    # -- the end -------------------------------------------------------------------------------

    def load_stop(self) -> None:
        value = self.stack.pop()
        self.as_data(self.measure(value)[2], "in its result")
        if self.filled_shared:
            _walk(self, value)
        raise pickle._Stop(value)
    dispatch[pickle.STOP[0]] = load_stop


def _unknown(engine: _Engine) -> None:
    raise pickle.UnpicklingError("not a pickle: an unknown opcode")


def _memo_read(read: Callable[[pickle._Unpickler], None]) -> Callable[[_Engine], None]:
    def load(engine: _Engine) -> None:
        read(engine)
        engine.reference(engine.stack[-1])
    return load


def _never(what: str) -> Callable[[_Engine], None]:
    def load(engine: _Engine) -> None:
        raise _refuse(f"holds {what}, which is never loaded")
    return load


for _code in set(range(256)) - set(_Engine.dispatch):
    _Engine.dispatch[_code] = _unknown
for _opcode in (pickle.BINGET, pickle.LONG_BINGET):
    _Engine.dispatch[_opcode[0]] = _memo_read(pickle._Unpickler.dispatch[_opcode[0]])
for _opcode, _held in ((pickle.PERSID, "a persistent id"), (pickle.BINPERSID, "a persistent id"),
                       (pickle.EXT1, "an extension code"), (pickle.EXT2, "an extension code"),
                       (pickle.EXT4, "an extension code"), (pickle.NEXT_BUFFER, "an out-of-band buffer"),
                       (pickle.READONLY_BUFFER, "an out-of-band buffer")):
    _Engine.dispatch[_opcode[0]] = _never(_held)


def _makes_new(cls: type) -> bool:
    """True when ``cls.__new__`` always returns a new object: ``object.__new__`` or a mutable builtin
    container's, or a builtin ``__new__`` a class defined in Python inherits (builtins cache only
    instances of their own exact type: small ints, the empty tuple)."""
    new = cls.__new__
    if new in _NEW_OBJECTS:
        return True
    return isinstance(new, BuiltinMethodType) and "__new__" not in vars(cls) and bool(cls.__flags__ & _HEAP_TYPE)


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class statement made it


def _children(obj: Any) -> Iterable[Any]:
    """What ``obj`` (a container or an instance this load made) holds."""
    if isinstance(obj, dict):
        yield from obj.keys()
        yield from obj.values()
    elif isinstance(obj, (list, tuple, set, frozenset, deque)):
        yield from obj
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        yield from attributes.values()
    for cls in type(obj).__mro__:
        slots = vars(cls).get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if not _dunder(slot) and hasattr(obj, slot):
                yield getattr(obj, slot)


def _walk(engine: _Engine, root: Any) -> None:
    """Refuse ``root`` unless its size (counting a shared object at each reference, a cycle once)
    and depth are within bounds: after an object was filled once shared, the sizes kept while
    loading no longer tell."""
    limit = engine.budget + engine._length + EXPANSION_BASE
    inside = {key for key, found in engine.measures.items() if found & _WALK}
    done: dict[int, tuple[int, int]] = {}
    on_path = {id(root)}
    frames = [[root, iter(_children(root)), 1, 0]]  # object, its children, size and depth so far
    while frames:
        frame = frames[-1]
        for child in frame[1]:
            key = id(child)
            if key in done:
                size, depth = done[key]
            elif key in on_path or key not in inside:
                size, depth = _units(child), 0
            else:
                on_path.add(key)
                frames.append([child, iter(_children(child)), 1, 0])
                break
            frame[2] += size
            frame[3] = max(frame[3], depth + 1)
        else:
            frames.pop()
            on_path.discard(id(frame[0]))
            done[id(frame[0])] = (frame[2], frame[3])
            if frame[2] > limit or frame[3] > MAX_DEPTH:
                raise _refuse(f"builds a structure of {frame[2]} size units, {frame[3]} levels deep, once its "
                              f"shared parts are counted at each reference (at most {limit} units, "
                              f"{MAX_DEPTH} levels)")
            if frames:
                frames[-1][2] += frame[2]
                frames[-1][3] = max(frames[-1][3], frame[3] + 1)


# --- what each constructor may be called with ------------------------------------------------

_Check = Callable[[_Engine, Any, tuple, dict], None]
_DECIMAL = re.compile(r"[+-]?(?:(?P<digits>\d+\.?\d*|\.\d+)(?:[eE](?P<exponent>[+-]?\d{1,9}))?"
                      r"|(?i:inf|infinity)|(?i:s?nan)(?P<payload>\d*))", re.ASCII)
_DIGITS_LIMIT = 10 ** MAX_DIGITS
_FRACTION = re.compile(r"[+-]?\d+(?:/\d+)?", re.ASCII)


def _bad(func: Any, why: str) -> UnsafePickleError:
    name = getattr(func, "__qualname__", repr(func))
    return _refuse(f"calls {getattr(func, '__module__', '?')}.{name} with {why}")


def _no_kwargs(func: Any, kwargs: dict) -> None:
    if kwargs:
        raise _bad(func, f"keyword arguments {sorted(kwargs)}")


def _arity(func: Any, args: tuple, most: int, least: int = 0) -> None:
    if not least <= len(args) <= most:
        raise _bad(func, f"{len(args)} arguments (it takes {least} to {most} here)")


def _int(func: Any, value: Any, what: str = "an int") -> None:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BYTES * 8:
        raise _bad(func, f"{what} of {value.bit_length()} bits")


def _digits_text(func: Any, text: str, what: str) -> None:
    """``text``: ASCII digits, at most one '.'; at most MAX_DIGITS of them."""
    digits = len(text) - text.count(".")
    if digits > MAX_DIGITS:
        raise _bad(func, f"{what} of {digits} digits (at most {MAX_DIGITS})")


def _number(func: Any, value: Any, texts: bool = True) -> None:
    """An int, float, bool, or (``texts``) a bounded text of one: never a Decimal, Fraction or object."""
    if type(value) in (int, bool, float):
        return _int(func, value)
    if texts and type(value) in (str, bytes) and len(value) <= MAX_DIGITS + 8:
        return None
    raise _bad(func, f"a {_what(value)} where a plain number (or a number's text of at most {MAX_DIGITS} "
                     f"digits) is expected")


def _check_int(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    _no_kwargs(func, kwargs)
    _arity(func, args, 2)
    if args:
        _number(func, args[0])
    if len(args) == 2 and (type(args[1]) is not int or not (args[1] == 0 or 2 <= args[1] <= 36)):
        raise _bad(func, f"base {args[1]!r}")


def _check_numbers(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """float(x) and complex(real, imag): plain numbers or short texts."""
    _no_kwargs(func, kwargs)
    _arity(func, args, 2 if func is complex else 1)
    for value in args:
        _number(func, value)


def _check_str(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    _no_kwargs(func, kwargs)
    _arity(func, args, 1)
    if args and type(args[0]) is not str:
        raise _bad(func, f"a {_what(args[0])}: str() of text only")


def _check_scalars(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """bool, slice, object and the datetime classes: small plain values (None, numbers of at most
    64 bits, texts and bytes of at most 64), a date's time zone, or a delta."""
    _no_kwargs(func, kwargs)
    _arity(func, args, 8)
    for value in args:
        if value is None or isinstance(value, (tzinfo, timedelta)):
            continue
        if type(value) in (int, bool) and value.bit_length() <= 64 or type(value) is float:
            continue
        if type(value) in (str, bytes) and len(value) <= 64:
            continue
        raise _bad(func, f"a {_what(value)} where a small plain value is expected")


def _check_collection(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """list, tuple, set, frozenset, deque, Counter: a list, tuple, set, frozenset or dict of this load."""
    _no_kwargs(func, kwargs)
    _arity(func, args, 2 if issubclass(func, deque) else 1)
    if args:
        _plain_collection(func, args[0])
        if issubclass(func, (set, frozenset, dict)):
            engine.check_keys(None, args[0])
    if len(args) == 2 and not (args[1] is None or type(args[1]) is int and args[1] >= 0):
        raise _bad(func, f"maxlen {args[1]!r}")


def _plain_collection(func: Any, value: Any) -> None:
    if type(value) not in (list, tuple, set, frozenset, dict):
        raise _bad(func, f"a {_what(value)} to iterate: only a list, tuple, set, frozenset or dict")


def _check_mapping(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """dict, OrderedDict: nothing, a dict, or a list or tuple of pairs."""
    _no_kwargs(func, kwargs)
    _arity(func, args, 1)
    if args:
        _pairs(engine, func, args[0])


def _pairs(engine: _Engine, func: Any, value: Any) -> None:
    if type(value) is dict:
        return engine.check_keys(None, value)
    if type(value) not in (list, tuple) or not all(type(pair) in (list, tuple) and len(pair) == 2 for pair in value):
        raise _bad(func, f"a {_what(value)} where a dict or a list of pairs is expected")
    engine.check_keys(None, (pair[0] for pair in value))


def _check_defaultdict(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """defaultdict(factory[, pairs]): the factory a class this load named (or None)."""
    _no_kwargs(func, kwargs)
    _arity(func, args, 2)
    if args and args[0] is not None and not (id(args[0]) in engine.named and isinstance(args[0], type)):
        raise _bad(func, f"a factory that is a {_what(args[0])}, not a class the pickle names")
    if len(args) == 2:
        _pairs(engine, func, args[1])


def _check_chainmap(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    _no_kwargs(func, kwargs)
    for value in args:
        if not isinstance(value, dict) or not engine.is_fresh(value):
            raise _bad(func, f"a {_what(value)} where a dict of this pickle is expected")


def _check_decimal(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """Decimal(text): at most MAX_DIGITS digits and an exponent within ±MAX_EXPONENT; or a plain number."""
    _no_kwargs(func, kwargs)
    _arity(func, args, 1)
    if not args or type(args[0]) in (int, bool, float):
        return _int(func, args[0]) if args else None
    text = args[0]
    found = _DECIMAL.fullmatch(text) if type(text) is str else None
    if found is None:
        raise _bad(func, f"a {_what(text)} that is not a decimal number's plain text: {str(text)[:40]!r}")
    digits = found["digits"] or found["payload"] or ""
    _digits_text(func, digits, "a decimal")
    exponent = int(found["exponent"] or 0) - len(digits.partition(".")[2])
    if abs(exponent) > MAX_EXPONENT:
        raise _bad(func, f"a decimal of exponent {exponent} (at most {MAX_EXPONENT} either way)")


def _check_fraction(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """Fraction("n/d") or Fraction(n, d): plain integers of at most MAX_DIGITS digits, no exponent."""
    _no_kwargs(func, kwargs)
    _arity(func, args, 2)
    if len(args) == 1 and type(args[0]) is str:
        if not _FRACTION.fullmatch(args[0]):
            raise _bad(func, f"text that is not a plain fraction 'n/d': {args[0][:40]!r}")
        return _digits_text(func, max(args[0].split("/"), key=len), "a fraction's part")
    for value in args:
        if type(value) is not int:
            raise _bad(func, f"a {_what(value)} where an int is expected")
        if abs(value) >= _DIGITS_LIMIT:
            raise _bad(func, f"an int of more than {MAX_DIGITS} digits")


def _check_encode(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """_codecs.encode(text, "latin1") and bytes() as protocol 2 writes bytes, bytearray(text,
    "latin-1") as protocols 0-2 write a bytearray (or of bytes); no other codec, never a number."""
    _no_kwargs(func, kwargs)
    if func is not _codecs.encode and (not args or len(args) == 1 and type(args[0]) is bytes):
        return
    if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
        raise _bad(func, "other arguments than (text, 'latin1')")


def _check_reconstructor(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """copyreg._reconstructor(cls, object, None), as protocols 0-1 write an instance; or with a
    standard base and its state, checked as that base's constructor would be."""
    _no_kwargs(func, kwargs)
    if len(args) != 3 or not all(id(arg) in engine.named and isinstance(arg, type) for arg in args[:2]):
        raise _bad(func, "other arguments than (a class, its base, state), both classes named by the pickle")
    cls, base, state = args
    if not issubclass(cls, base):
        raise _bad(func, f"class {cls.__qualname__}, which does not derive from {base.__qualname__}")
    if base is object:
        if state is not None:
            raise _bad(func, "base object and a state")
        return
    if base not in _CHECKS or base is object:
        raise _bad(func, f"base {base.__qualname__}, which is not a standard data class")
    _CHECKS[base](engine, base, (state,), {})


def _check_enum(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """An Enum class called with one value: the member of that value (no new enum is made)."""
    _no_kwargs(func, kwargs)
    _arity(func, args, 1, 1)
    _check_free(engine, func, args, kwargs)


def _check_free(engine: _Engine, func: Any, args: tuple, kwargs: dict) -> None:
    """A class of an allowed module (its own constructor, trusted) or one the operator listed:
    any data, no function."""
    if engine.measure_all((args, kwargs))[2]:
        raise _bad(func, "a function as an argument")


_CHECKS: dict[Any, _Check] = {
    int: _check_int, float: _check_numbers, complex: _check_numbers, str: _check_str,
    bool: _check_scalars, slice: _check_scalars, object: _check_scalars,
    list: _check_collection, tuple: _check_collection, set: _check_collection, frozenset: _check_collection,
    deque: _check_collection, Counter: _check_collection, dict: _check_mapping, OrderedDict: _check_mapping,
    defaultdict: _check_defaultdict, ChainMap: _check_chainmap,
    date: _check_scalars, time: _check_scalars, datetime: _check_scalars, timedelta: _check_scalars,
    timezone: _check_scalars, UUID: _check_scalars, SafeUUID: _check_enum,
    Decimal: _check_decimal, Fraction: _check_fraction,
    _codecs.encode: _check_encode, bytes: _check_encode, bytearray: _check_encode,
    copyreg._reconstructor: _check_reconstructor,
}


def _check_for(func: Any) -> _Check:
    """The check of ``func``'s arguments: its own, an Enum's, that of the standard class whose
    constructor a subclass inherits (``class Money(Decimal)``), else ``_check_free``."""
    check = _CHECKS.get(func)
    if check is not None:
        return check
    if isinstance(func, EnumType):
        return _check_enum
    if isinstance(func, type):
        owner = next(cls for cls in func.__mro__ if "__new__" in vars(cls) or "__init__" in vars(cls))
        return _CHECKS.get(owner, _check_free)
    return _check_free


_SAFE_OBJECTS: dict[tuple[str, str], Any] = {
    (module, name): getattr(importlib.import_module(module), name) for module, name in SAFE_GLOBALS
}
