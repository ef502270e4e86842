"""Forged pickles, written opcode by opcode as an attacker writes them (issue 19 and beyond).

``MUTATIONS``: pickles whose load would change a class or an object that existed before it, each
loading to plain data (a dict) if the change went through. ``BOMBS``: small pickles whose load
would cost seconds to hours of CPU, or gigabytes. ``fingerprint()`` reads back everything the
mutations aim at, so a test can check, from a later job of the same worker, that nothing changed.
"""

from __future__ import annotations

import collections
import decimal
import fractions
import json
import pickle
import uuid
import zlib
from datetime import timezone

from redis import Redis

#: The value a forged pickle tries to write into a class or object.
PWNED = "pwned"


def text(value: str) -> bytes:
    """A str pushed on the stack (SHORT_BINUNICODE / BINUNICODE)."""
    raw = value.encode()
    if len(raw) < 256:
        return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw
    return pickle.BINUNICODE + len(raw).to_bytes(4, "little") + raw


def name(module: str, qualname: str) -> bytes:
    """The object ``module.qualname`` pushed on the stack (STACK_GLOBAL)."""
    return text(module) + text(qualname) + pickle.STACK_GLOBAL


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)`` pushed on the stack (a tuple of ``args``, then REDUCE)."""
    return func + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


def small_int(value: int) -> bytes:
    return pickle.BININT1 + bytes([value])


def forge(*parts: bytes, result: bytes = pickle.EMPTY_DICT) -> bytes:
    """A protocol-4 pickle running ``parts`` (each leaves one object on the stack, dropped), then
    loading ``result``: a job's meta that says nothing ({}) once its side effects are done."""
    return pickle.PROTO + b"\x04" + b"".join(part + pickle.POP for part in parts) + result + pickle.STOP


def attributes(**values: str) -> bytes:
    """A dict of ``values`` pushed on the stack."""
    return pickle.EMPTY_DICT + b"".join(text(k) + text(v) + pickle.SETITEM for k, v in values.items())


def build(target: bytes, state: bytes) -> bytes:
    """BUILD on ``target`` with ``state``: its ``__setstate__``, else ``__dict__`` update and setattr."""
    return target + state + pickle.BUILD


def set_attribute(target: bytes, attribute: str, value: str = PWNED) -> bytes:
    """BUILD with slot state: ``setattr(target, attribute, value)``, which works on classes too."""
    return build(target, pickle.NONE + attributes(**{attribute: value}) + pickle.TUPLE2)


UTC = call(name("datetime", "timezone"), call(name("datetime", "timedelta")))  # timezone(timedelta()) is utc
SAFE_MEMBER = call(name("uuid", "SafeUUID"), small_int(0))                     # SafeUUID(0) is SafeUUID.safe
TARGET = name("tests.jobs", "Target")
SINGLETON = name("tests.jobs", "Singleton")

#: Each forgery and what it would change: classes of an allowed module and standard classes
#: (setattr by BUILD), objects that exist before the load (Enum members, timezone.utc, a
#: singleton), by BUILD, __setstate__, SETITEMS and APPENDS, and dunders through BUILD.
MUTATIONS = {
    "BUILD on an allowed class": forge(set_attribute(TARGET, "mode")),
    "BUILD on tasks.payments.Settings": forge(set_attribute(name("tasks.payments", "Settings"), "gateway",
                                                            "tests.jobs.Target")),
    "BUILD on tasks.payments.Payment": forge(set_attribute(name("tasks.payments", "Payment"), "cents")),
    "BUILD on Counter": forge(set_attribute(name("collections", "Counter"), "most_common")),
    "BUILD on ChainMap": forge(set_attribute(name("collections", "ChainMap"), "get")),
    "BUILD on Fraction": forge(set_attribute(name("fractions", "Fraction"), "limit_denominator")),
    "BUILD on Decimal": forge(set_attribute(name("decimal", "Decimal"), "quantize")),
    "BUILD on OrderedDict": forge(set_attribute(name("collections", "OrderedDict"), "popitem")),
    "BUILD on an Enum member": forge(set_attribute(SAFE_MEMBER, "_value_")),
    "BUILD on timezone.utc": forge(set_attribute(UTC, "utcoffset")),
    "__setstate__ of a singleton": forge(build(call(SINGLETON), attributes(mode=PWNED))),
    "SETITEMS into a shared dict": forge(call(name("tests.jobs", "Registry")) + pickle.MARK + text("mode")
                                         + text(PWNED) + pickle.SETITEMS),
    "APPENDS to a shared list": forge(call(name("tests.jobs", "Journal")) + pickle.MARK + text(PWNED)
                                      + pickle.APPENDS),
    "BUILD setting __class__ of a new object": forge(build(name("tests.jobs", "Recorder") + pickle.EMPTY_TUPLE
                                                           + pickle.NEWOBJ, attributes(__class__=PWNED))),
    "BUILD setting __dict__ of a new object": forge(build(name("tests.jobs", "Recorder") + pickle.EMPTY_TUPLE
                                                          + pickle.NEWOBJ,
                                                          pickle.NONE + attributes(__dict__=PWNED) + pickle.TUPLE2)),
}


def dag(levels: int, leaf: bytes = pickle.EMPTY_TUPLE) -> bytes:
    """A tuple of depth ``levels`` whose two halves are one object (memo): 2**levels leaves."""
    ops = leaf + pickle.MEMOIZE
    for level in range(levels):
        ops += pickle.BINGET + bytes([level]) + pickle.DUP + pickle.TUPLE2 + pickle.MEMOIZE
    return ops


def nested(levels: int) -> bytes:
    """``levels`` lists, each inside the next."""
    return pickle.EMPTY_LIST * levels + pickle.APPEND * (levels - 1)


def decimal_text(value: str) -> bytes:
    return call(name("decimal", "Decimal"), text(value))


#: Small pickles whose load costs much: from the issue (int of a huge Decimal: 53 bytes, 25 s;
#: Fraction of an exponent: 19 s) and the classic ones.
BOMBS = {
    "int(Decimal('1e1000000'))": forge(result=call(name("builtins", "int"), decimal_text("1e1000000"))),
    "Fraction('1e20000000')": forge(result=call(name("fractions", "Fraction"), text("1e20000000"))),
    "Decimal of 2,000 digits": forge(result=decimal_text("9" * 2000)),
    "int of a Fraction": forge(result=call(name("builtins", "int"), call(name("fractions", "Fraction"), text("7/2")))),
    "hashing a memo-shared tuple (no global)": pickle.PROTO + b"\x04" + pickle.EMPTY_SET + pickle.MARK + dag(60)
    + pickle.ADDITEMS + pickle.STOP,
    "a memo-shared tuple (no global)": pickle.PROTO + b"\x04" + dag(60) + pickle.STOP,
    "a list in a tuple 100,000 times, then filled with 512 KB": pickle.PROTO + b"\x04" + pickle.EMPTY_LIST
    + pickle.MEMOIZE + pickle.MARK + pickle.BINGET + b"\x00" + pickle.DUP * 99_999 + pickle.TUPLE
    + pickle.BINGET + b"\x00" + text("x" * 2**19) + pickle.APPEND + pickle.POP + pickle.STOP,
    "a list 90 deep, then filled with lists 90 deep": pickle.PROTO + b"\x04" + pickle.EMPTY_LIST + pickle.MEMOIZE
    + pickle.POP + pickle.EMPTY_LIST * 90 + pickle.BINGET + b"\x00" + pickle.APPEND * 90
    + pickle.BINGET + b"\x00" + nested(90) + pickle.APPEND + pickle.POP + pickle.STOP,
    "a dict of 5,000 int keys of one hash": pickle.PROTO + b"\x04" + pickle.EMPTY_DICT + pickle.MARK + b"".join(
        pickle.LONG1 + b"\x0a" + (n * (2**61 - 1)).to_bytes(10, "little", signed=True) + pickle.NONE
        for n in range(1, 5001)) + pickle.SETITEMS + pickle.STOP,
    "lists nested 100,000 deep": pickle.PROTO + b"\x04" + nested(100_000) + pickle.STOP,
    "a bytearray of 2**40 bytes announced": pickle.PROTO + b"\x05" + pickle.BYTEARRAY8 + (2**40).to_bytes(8, "little")
    + pickle.STOP,
    "an int of 100 KB": pickle.PROTO + b"\x04" + pickle.LONG4 + (100_000).to_bytes(4, "little") + b"\x01" * 100_000
    + pickle.STOP,
    "a text int of 100,000 digits": b"I" + b"9" * 100_000 + b"\n.",
    "memo indexes of one hash (protocol 0)": b"N" + b"".join(b"p%d\n" % (n * (2**61 - 1)) for n in range(1, 5000)) + b".",
    "bytes(10**12)": forge(result=call(name("builtins", "bytes"), pickle.LONG1 + b"\x05" + (10**12).to_bytes(5, "little"))),
    "_codecs.encode with another codec": forge(result=call(name("_codecs", "encode"), text("x" * 10), text("punycode"))),
    "deque of a str": forge(result=call(name("collections", "deque"), text("x" * 200))),
}


def _shown(value: object) -> str:
    """``value`` as text that is the same in every process (no addresses)."""
    qualname = getattr(value, "__qualname__", None) or getattr(getattr(value, "fget", None), "__qualname__", None)
    return f"{type(value).__name__} {qualname}" if qualname or callable(value) else repr(value)


def fingerprint() -> dict[str, str]:
    """What every forgery of ``MUTATIONS`` aims at, as this process sees it now."""
    from tasks.payments import Payment, Settings
    from tests.jobs import Journal, Recorder, Registry, Singleton, Target

    seen = {
        "Target.mode": Target.mode, "Singleton() state": vars(Singleton()), "Settings.gateway": Settings.gateway,
        "Payment.cents": Payment.cents, "Counter.most_common": collections.Counter.most_common,
        "ChainMap.get": collections.ChainMap.get, "Fraction.limit_denominator": fractions.Fraction.limit_denominator,
        "Decimal.quantize": decimal.Decimal.quantize, "OrderedDict.popitem": collections.OrderedDict.popitem,
        "SafeUUID.safe": uuid.SafeUUID.safe._value_, "utc.utcoffset": timezone.utc.utcoffset,
        "Registry()": dict(Registry()), "Journal()": list(Journal()), "Recorder.__dict__": "__dict__" in vars(Recorder),
    }
    return {key: _shown(value) for key, value in seen.items()}


def job_data(function: str, instance: bytes = pickle.NONE, args: bytes = pickle.EMPTY_TUPLE) -> bytes:
    """A job's data field (function name, instance, args, kwargs), compressed as RQ stores it."""
    return zlib.compress(pickle.PROTO + b"\x04" + pickle.MARK + text(function) + instance + args
                         + pickle.EMPTY_DICT + pickle.TUPLE + pickle.STOP)


#: A job's data field that inflates 64 MB of pickle from 64 KB of zlib.
INFLATING_DATA = zlib.compress(pickle.PROTO + b"\x04" + pickle.NONE * 2**26, 9)

#: Forged job data: the mutation hidden in the arguments, or building the instance a method runs on;
#: and a data field that inflates beyond any pickle a worker loads.
FORGED_DATA = {
    "args: BUILD on an allowed class": job_data("tests.jobs.record", args=pickle.MARK + set_attribute(TARGET, "mode")
                                                + pickle.TUPLE),
    "args: BUILD on an Enum member": job_data("tests.jobs.record", args=pickle.MARK + set_attribute(SAFE_MEMBER, "_value_")
                                              + pickle.TUPLE),
    "args: SETITEMS into a shared dict": job_data("tests.jobs.record", args=pickle.MARK + call(name("tests.jobs", "Registry"))
                                                  + pickle.MARK + text("mode") + text(PWNED) + pickle.SETITEMS + pickle.TUPLE),
    "instance: __setstate__ of a singleton": job_data("bound", instance=build(call(SINGLETON), attributes(mode=PWNED))),
    "instance: APPENDS to a shared list": job_data("append", instance=call(name("tests.jobs", "Journal")) + pickle.MARK
                                                   + text(PWNED) + pickle.APPENDS),
    "64 MB of pickle in 64 KB of zlib": INFLATING_DATA,
}


def assert_forgeries_change_nothing(redis: Redis, timeout: float = 120) -> None:
    """Enqueue a job with each forged meta (``MUTATIONS``) and each forged data (``FORGED_DATA``) to
    queue ``work``, which a running worker serves; each must fail, saying the pickle was refused,
    none may run, and a later job of the same worker must see every target as a fresh process does."""
    from rqplus import Queue
    from tests.conftest import wait_for
    from tests.jobs import ran

    queue = Queue("work", connection=redis)
    forged = {}
    for title, meta in MUTATIONS.items():
        job = forged[f"meta: {title}"] = queue.enqueue("tests.jobs.record", title)
        redis.hset(job.key, "meta", meta)
    for title, data in FORGED_DATA.items():
        job = forged[f"data: {title}"] = queue.enqueue("tests.jobs.record", title)
        redis.hset(job.key, "data", data)
    wait_for(lambda: all(job.get_status(refresh=True) in ("failed", "finished") for job in forged.values()), timeout)
    later = queue.enqueue("tests.jobs.fingerprint")
    wait_for(lambda: later.get_status(refresh=True) == "finished", timeout)
    assert json.loads(redis.lindex("test:fingerprints", -1)) == fingerprint()
    for title, job in forged.items():
        reason = job.latest_result().exc_string or "" if job.get_status() == "failed" else "(ran)"
        assert "the pickle" in reason and "nothing of it was used" in reason, (title, reason)
        assert ("UnsafePickleError" if title.startswith("meta") else "DeserializationError") in reason, (title, reason)
    assert ran(redis) == []
