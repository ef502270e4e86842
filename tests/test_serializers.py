"""rqplus/serializers.py and rqplus/unpickling.py: a load builds plain data, standard data classes
and classes of allowed modules, changes nothing that existed before it, and costs little; anything
else is refused before it is imported, called or built."""

from __future__ import annotations

import collections
import gc
import io
import json
import os
import pickle
import subprocess
import sys
import time
import uuid
from datetime import date, datetime, time as clock, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from rq.serializers import DefaultSerializer, JSONSerializer

from rqplus import unpickling
from rqplus.exceptions import UnsafePickleError
from rqplus.serializers import (RestrictedPickleSerializer, SafePickleSerializer, Withheld, job_class,
                                withheld_in, worker_serializer)
from rqplus.unpickling import FAST_PATH_BYTES, MAX_DEPTH, MAX_DIGITS, MAX_EQUAL_HASHES, MAX_EXPONENT, plain_pickle
from tasks.gateways import Charge
from tasks.payments import Payment, Settings
from tests import jobs, pickles
from tests.pickles import BOMBS, MUTATIONS, call, forge, name, small_int, text

ROOT = Path(__file__).resolve().parent.parent
READERS = [SafePickleSerializer, RestrictedPickleSerializer]

PLAIN = {
    "text": "é", "bytes": b"\x00\xff", "bytearray": bytearray(b"ab"), "int": 2**70, "negative": -2**200,
    "float": 1.5, "none": None, "bool": True, "list": [1, [2]], "tuple": (1, 2), "set": {1, 2},
    "frozenset": frozenset({3}), "complex": 1j, "slice": slice(1, 2), "date": date(2026, 11, 30),
    "time": clock(13, 0, tzinfo=timezone.utc), "delta": timedelta(days=2, microseconds=5),
    "datetime": datetime(2026, 11, 30, 13, 0, tzinfo=timezone(timedelta(hours=1), "CET")),
    "utc": datetime(2026, 1, 1, tzinfo=timezone.utc), "decimal": Decimal("12.50"), "infinite": Decimal("-Infinity"),
    "exponent": Decimal("1.5E+30"), "fraction": Fraction(1, 3), "uuid": uuid.UUID(int=7), "uuid4": uuid.uuid4(),
    "ordered": collections.OrderedDict(a=1), "deque": collections.deque([1, 2], maxlen=5),
    "counter": collections.Counter("aab"), "defaultdict": collections.defaultdict(list, {"a": [1]}),
    "chainmap": collections.ChainMap({"a": 1}, {"b": 2}), "nested": {"a": [{"b": (1, frozenset({2, 3}))}]},
    "safe uuid": uuid.SafeUUID.safe,
}
#: Instances of classes of allowed modules (tasks, tests.jobs): dataclasses with and without
#: slots, frozen ones, an Enum member, a plain class.
ALLOWED = {
    "payment": Payment("u1", Decimal("1.00"), "EUR", "k1"), "settings": Settings(), "plain": jobs.Plain(3, ["a"]),
    "charge": Charge("ch_1", "SUCCEEDED", "u", Decimal("2.00"), "EUR", "k", 1.5), "slotted": jobs.Slotted(1, "y"),
    "frozen slotted": jobs.FrozenSlotted(2), "enum": jobs.Colour.GREEN, "enum by int": jobs.Colour.RED,
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_documented_type_round_trips_at_every_protocol(protocol):
    # a class with __slots__ and no __getstate__ cannot be pickled below protocol 2
    allowed = {key: value for key, value in ALLOWED.items() if protocol >= 2 or key != "slotted"}
    data = {**PLAIN, **allowed}
    loaded = SafePickleSerializer.loads(pickle.dumps(data, protocol=protocol))
    assert loaded == data and loaded["enum"] is jobs.Colour.GREEN
    assert vars(SafePickleSerializer.loads(pickle.dumps(jobs.Recorder("p"), protocol=protocol))) == {"prefix": "p"}
    assert RestrictedPickleSerializer.loads(pickle.dumps(PLAIN, protocol=protocol)) == PLAIN
    shown = RestrictedPickleSerializer.loads(pickle.dumps(allowed, protocol=protocol))
    assert sorted(withheld_in(shown)) == sorted(f"{type(value).__module__}.{type(value).__qualname__}"
                                                for value in allowed.values())


def test_a_cycle_loads_as_pickle_loads_it():
    looped: list = []
    looped.append(looped)
    parent = jobs.Plain(1, [])
    parent.tags.append(jobs.Plain(2, [parent]))
    for reader in READERS:
        again = reader.loads(pickle.dumps(looped))
        assert again[0] is again
    again = SafePickleSerializer.loads(pickle.dumps(parent))
    assert again.tags[0].tags[0] is again


def test_bytearrays_load_as_rq_pickles_them_but_no_global_builds_large_data():
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert SafePickleSerializer.loads(pickle.dumps(bytearray(b"ab"), protocol=protocol)) == bytearray(b"ab")
    with pytest.raises(UnsafePickleError, match="builtins.range, which is not loaded"):
        SafePickleSerializer.loads(pickle.dumps(_Reduce(list, range(10**12))))
    for amplifier, rule in ((_Reduce(bytes, 10**12), "calls builtins.bytes with other arguments"),
                            (_Reduce(bytearray, 10**12), "calls builtins.bytearray with other arguments")):
        with pytest.raises(UnsafePickleError, match=rule):
            SafePickleSerializer.loads(pickle.dumps(amplifier))


def test_classes_of_allowed_modules_load():
    loaded = SafePickleSerializer.loads(pickle.dumps(("bound", jobs.Recorder("p-"), (), {})))
    assert isinstance(loaded[1], jobs.Recorder) and loaded[1].prefix == "p-"


class _Reduce:
    """Unpickles as ``target(*args)``."""

    def __init__(self, target, *args) -> None:
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def test_a_forged_reduce_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    forged = pickle.dumps({"ok": 1, "x": _Reduce(os.system, f"touch {marker}")})
    with pytest.raises(UnsafePickleError, match="the pickle names posix.system, which is not loaded"):
        SafePickleSerializer.loads(forged)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match="subprocess.Popen"):
        SafePickleSerializer.loads(pickle.dumps(_Reduce(subprocess.Popen, ["touch", str(marker)])))
    assert not marker.exists()


@pytest.mark.parametrize("module, name, rule", [
    ("builtins", "eval", "builtins.eval, which is not loaded"),
    ("builtins", "getattr", "builtins.getattr, which is not loaded"),
    ("tests.jobs", "os.system", "steps through module os"),      # a walk through an allowed module's global
    ("tests.jobs", "record", "is not a class"),                  # functions of allowed modules are not built
    ("tests.jobs", "reexported", "defined in posix"),
    ("tests.jobs", "Recorder.__class__", "dunder attributes are never resolved"),
    ("tests.import_canary", "run", "not loaded"),                # outside the allow-list: never imported
    ("functools", "partial", "not loaded"),
    ("copyreg", "_reconstructor", "puts a function it names in its result"),  # named to be called only
])
def test_globals_outside_the_rules_are_refused(module, name, rule, tmp_path, monkeypatch):
    canary = tmp_path / "canary"
    monkeypatch.setenv("CANARY_PATH", str(canary))
    with pytest.raises(UnsafePickleError, match=rule):
        SafePickleSerializer.loads(pickles.forge(result=pickles.name(module, name)))
    assert not canary.exists()


def test_persistent_ids_and_extension_codes_are_refused():
    class Persist(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if obj == "secret" else None

    buffer = io.BytesIO()
    Persist(buffer).dump(["secret"])
    for reader in READERS:
        with pytest.raises(UnsafePickleError, match="persistent id"):
            reader.loads(buffer.getvalue())
        with pytest.raises(UnsafePickleError, match="extension code"):
            reader.loads(pickle.PROTO + b"\x02" + pickle.EXT1 + b"\x01" + pickle.STOP)


def test_further_classes_are_allowed_by_name_only(monkeypatch):
    data = pickle.dumps(PurePosixPath("/a"))
    with pytest.raises(UnsafePickleError, match="RQPLUS_PICKLE_CLASSES"):
        SafePickleSerializer.loads(data)
    monkeypatch.setenv("RQPLUS_PICKLE_CLASSES", "pathlib.PurePosixPath, pathlib.Path")
    assert SafePickleSerializer.loads(data) == PurePosixPath("/a")
    with pytest.raises(UnsafePickleError):
        SafePickleSerializer.loads(pickle.dumps(_Reduce(os.system, "true")))


# --- a load changes nothing that existed before it ---------------------------------------------

@pytest.mark.parametrize("title", MUTATIONS)
def test_forged_mutations_are_refused_and_change_nothing(title):
    before = pickles.fingerprint()
    with pytest.raises(UnsafePickleError, match="(applies (BUILD|SETITEMS|APPENDS) to a|sets attribute '__).*"
                                                "nothing of it was used"):
        SafePickleSerializer.loads(MUTATIONS[title])
    try:  # the dashboard's reader: refused too, or (a class it does not import) its placeholder took it
        assert RestrictedPickleSerializer.loads(MUTATIONS[title]) == {}
    except UnsafePickleError as error:
        assert "nothing of it was used" in str(error)
    assert pickles.fingerprint() == before


def test_the_forged_mutations_do_change_classes_under_pickle_loads():
    """So the test above tests something: with the stock unpickler, in a process of its own, each
    forgery (but those on C types, which refuse setattr) changes its target."""
    code = ("import json, pickle\nfrom tests import pickles\nchanged = {}\n"
            "for title, data in pickles.MUTATIONS.items():\n"
            "    before = pickles.fingerprint()\n"
            "    try: pickle.loads(data)\n    except Exception: pass\n"
            "    changed[title] = sorted(k for k, v in pickles.fingerprint().items() if v != before[k])\n"
            "print(json.dumps(changed))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    changed = {title: keys for title, keys in json.loads(out).items() if keys}
    assert set(changed) == {"BUILD on an allowed class", "BUILD on tasks.payments.Settings",
                            "BUILD on tasks.payments.Payment", "BUILD on Counter", "BUILD on ChainMap",
                            "BUILD on Fraction", "BUILD on an Enum member", "__setstate__ of a singleton",
                            "SETITEMS into a shared dict", "APPENDS to a shared list"}, changed


def test_only_objects_this_load_made_are_filled():
    member = call(name("uuid", "SafeUUID"), small_int(0))
    for forged, rule in (
            (forge(member + pickle.MARK + text("x") + pickle.APPENDS), "APPENDS to a uuid.SafeUUID object"),
            (forge(name("collections", "Counter") + text("k") + text("v") + pickle.SETITEM), "SETITEM to a class"),
            (forge(call(name("builtins", "int"), small_int(5)) + pickle.EMPTY_DICT + pickle.BUILD), "BUILD to a int"),
            (forge(pickle.EMPTY_TUPLE + pickle.EMPTY_DICT + pickle.BUILD), "BUILD to a tuple object"),
            (forge(pickle.EMPTY_LIST + pickle.EMPTY_TUPLE + pickle.REDUCE), "calls a list object .REDUCE. that it "
                                                                            "did not name"),
            (forge(name("_codecs", "encode") + pickle.EMPTY_TUPLE + pickle.NEWOBJ), "NEWOBJ.*not a class"),
            (forge(call(name("collections", "defaultdict"), name("_codecs", "encode"))), "factory that is a"),
            (forge(result=pickle.MARK + name("_codecs", "encode") + pickle.LIST), "puts a function it names in a list"),
            (forge(result=call(name("tests.jobs", "Plain"), name("_codecs", "encode"), pickle.EMPTY_LIST)),
             "a function as an argument"),
    ):
        for reader in READERS:
            with pytest.raises(UnsafePickleError, match=rule):
                reader.loads(forged)


def test_a_class_may_be_data_but_never_changes():
    """A class named by the pickle is inert data (a defaultdict's factory, an argument); what
    constructs or fills it is checked as ever."""
    data = {"factory": collections.defaultdict(jobs.Plain), "classes": [collections.OrderedDict, jobs.Colour]}
    assert SafePickleSerializer.loads(pickle.dumps(data)) == data
    shown = RestrictedPickleSerializer.loads(pickle.dumps(data))
    assert withheld_in(shown) == ["tests.jobs.Colour"] and shown["classes"][0] is collections.OrderedDict


def test_state_never_names_a_dunder_nor_changes_a_shared_hash():
    recorder = name("tests.jobs", "Recorder") + pickle.EMPTY_TUPLE + pickle.NEWOBJ
    frozen = name("tests.jobs", "FrozenSlotted") + pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.MEMOIZE
    for forged, rule in (
            (forge(recorder + pickles.attributes(__weakref__="x") + pickle.BUILD), "attribute '__weakref__'"),
            (forge(recorder + pickle.EMPTY_DICT + small_int(1) + text("x") + pickle.SETITEM + pickle.BUILD),
             "attribute 1 of"),
            (forge(recorder + pickle.EMPTY_LIST + pickle.BUILD), "a state that is a list object, not a dict"),
            # a frozen dataclass (hashed by its state) given its state after a second reference to it
            (forge(frozen + pickle.BINGET + b"\x00" + pickle.POP + pickle.MARK + small_int(1) + pickle.LIST
                   + pickle.BUILD), "its hash would change"),
    ):
        with pytest.raises(UnsafePickleError, match=rule):
            SafePickleSerializer.loads(forged)


# --- bounded cost -----------------------------------------------------------------------------

BOMB_RULES = {
    "int(Decimal('1e1000000'))": "decimal of exponent 1000000",
    "Fraction('1e20000000')": "not a plain fraction",
    "Decimal of 2,000 digits": "decimal of 2000 digits",
    "int of a Fraction": "builtins.int with a fractions.Fraction object",
    "hashing a memo-shared tuple (no global)": "refers to objects it already built so often",
    "a memo-shared tuple (no global)": "refers to objects it already built so often",
    "a list in a tuple 100,000 times, then filled with 512 KB": "once its shared parts are counted",
    "a list 90 deep, then filled with lists 90 deep": "101 levels deep",
    "a dict of 5,000 int keys of one hash": "a hash flood",
    "lists nested 100,000 deep": f"nests deeper than {MAX_DEPTH} levels",
    "a bytearray of 2**40 bytes announced": "longer than the pickle",
    "an int of 100 KB": "an int of 100000 bytes",
    "a text int of 100,000 digits": "a number of 100000 characters",
    "memo indexes of one hash (protocol 0)": "writes a number of 19 characters",
    "bytes(10**12)": "calls builtins.bytes with other arguments",
    "_codecs.encode with another codec": "other arguments than",
    "deque of a str": "a str object to iterate",
}


@pytest.mark.parametrize("title", BOMBS)
def test_bombs_are_refused_with_their_reason(title):
    for reader in READERS:
        with pytest.raises(UnsafePickleError, match=BOMB_RULES[title]):
            reader.loads(BOMBS[title])


def cpu_seconds(load, data: bytes) -> float:
    """CPU time of one ``load(data)`` in this thread, refused or not: not the process' (other tests'
    threads, a dashboard's or a requeue driver's, may still run), and without a garbage collection
    of other tests' objects landing in it."""
    gc.disable()
    start = time.thread_time()
    try:
        load(data)
    except Exception:
        pass
    finally:
        seconds = time.thread_time() - start
        gc.enable()
    return seconds


def test_every_attack_pickle_under_200_bytes_loads_in_under_50_ms():
    small = {title: data for title, data in {**MUTATIONS, **BOMBS}.items() if len(data) < 200}
    assert len(small) >= 20
    for reader in READERS:
        slow = {title: seconds for title, data in small.items() if (seconds := cpu_seconds(reader.loads, data)) >= 0.05}
        assert not slow, (reader.__name__, slow)


#: Pieces of pickles: opcodes with their arguments, names the rules allow and refuse, numbers and
#: texts that cost much when converted, memo reads, and every opcode that builds, fills or calls.
FRAGMENTS = [
    pickle.MARK, pickle.STOP, pickle.POP, pickle.POP_MARK, pickle.DUP, pickle.NONE, pickle.NEWTRUE, pickle.MEMOIZE,
    pickle.EMPTY_LIST, pickle.EMPTY_DICT, pickle.EMPTY_SET, pickle.EMPTY_TUPLE, pickle.LIST, pickle.DICT,
    pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.FROZENSET, pickle.APPEND, pickle.APPENDS,
    pickle.SETITEM, pickle.SETITEMS, pickle.ADDITEMS, pickle.BUILD, pickle.REDUCE, pickle.NEWOBJ, pickle.NEWOBJ_EX,
    pickle.OBJ, pickle.STACK_GLOBAL, pickle.BINPERSID, pickle.READONLY_BUFFER,
    *(pickle.BINGET + bytes([n]) for n in range(4)), pickle.LONG_BINGET + b"\x01\x00\x00\x00",
    small_int(0), small_int(255), pickle.BININT + b"\xff\xff\xff\xff", pickle.BINFLOAT + b"\x7f\xf0" + b"\x00" * 6,
    pickle.LONG1 + b"\x0a" + (2**61 - 1).to_bytes(10, "little"), pickle.LONG4 + b"\xff\xff\xff\x7f",
    pickle.BYTEARRAY8 + b"\xff" * 8, pickle.SHORT_BINBYTES + b"\x02ab", pickle.FRAME + b"\xff" * 8,
    b"I99999999999999999999999999999\n", b"L0x" + b"f" * 40 + b"L\n", b"F1e308\n", b"I01\n",
    *(text(value) for value in ("1e1000000", "9" * 60, "1/3", "-Infinity", "sNaN123", "latin1", "k", "__class__",
                                "maps", "mode", "1_000", "0x10", " 12 ")),
    *(name(module, qualname) for module, qualname in (
        ("builtins", "int"), ("builtins", "float"), ("builtins", "complex"), ("builtins", "str"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"),
        ("builtins", "bytearray"), ("builtins", "object"), ("builtins", "slice"), ("decimal", "Decimal"),
        ("fractions", "Fraction"), ("datetime", "timezone"), ("datetime", "timedelta"), ("datetime", "datetime"),
        ("collections", "Counter"), ("collections", "defaultdict"), ("collections", "deque"),
        ("collections", "ChainMap"), ("collections", "OrderedDict"), ("uuid", "UUID"), ("uuid", "SafeUUID"),
        ("_codecs", "encode"), ("copyreg", "_reconstructor"), ("tests.jobs", "Target"), ("tests.jobs", "Registry"),
        ("tests.jobs", "Plain"), ("tests.jobs", "Colour"), ("tasks.payments", "Settings"), ("os", "system"))),
]


@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=60), st.sampled_from([b"\x02", b"\x04", b"\x05"]))
def test_generated_pickles_under_200_bytes_load_in_under_50_ms_or_are_refused(pieces, protocol):
    data = (pickle.PROTO + protocol + b"".join(pieces))[:199] + pickle.STOP
    before = pickles.fingerprint()
    for reader in READERS:
        seconds = cpu_seconds(reader.loads, data)
        assert seconds < 0.05, (reader.__name__, seconds, data)
    assert pickles.fingerprint() == before


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(max_size=199))
def test_any_bytes_under_200_are_read_or_refused_in_under_50_ms(data):
    assert plain_pickle(data) in (True, False)
    for reader in READERS:
        assert cpu_seconds(reader.loads, data) < 0.05


# --- the fast path builds what the engine builds --------------------------------------------

plain_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: (st.lists(children, max_size=5) | st.tuples(children, children)
                      | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=5)
                      | st.frozensets(st.integers() | st.text(max_size=5), max_size=5)
                      | st.sets(st.integers(), max_size=5)),
    max_leaves=30)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(plain_values, st.integers(min_value=2, max_value=pickle.HIGHEST_PROTOCOL))
def test_the_fast_path_and_the_engine_build_the_same(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    expected = pickle.loads(data)
    assert SafePickleSerializer.loads(data) == expected
    assert unpickling._Engine(data, job_class).load() == expected


def test_only_small_pickles_of_plain_values_without_memo_reads_take_the_fast_path():
    assert plain_pickle(pickle.dumps({"priority": 5}))
    assert plain_pickle(pickle.dumps(("tests.jobs.record", None, ("tag",), {}), protocol=5))
    shared = "abc"
    assert not plain_pickle(pickle.dumps([Decimal(1)]))                            # a global
    assert not plain_pickle(pickle.dumps([shared, shared]))                        # a memo read
    assert not plain_pickle(pickle.dumps(["x" * FAST_PATH_BYTES]))                 # too long
    assert not plain_pickle(pickle.dumps([1], protocol=0))                         # protocol 0's text opcodes
    assert not plain_pickle(pickle.dumps([[] for _ in range(MAX_DEPTH)]))          # more containers than levels
    assert not plain_pickle(pickle.dumps({"priority": 5})[:-1])                    # no STOP
    assert not plain_pickle(pickle.PROTO + b"\x04" + pickle.SHORT_BINUNICODE)     # no length after its opcode
    assert not plain_pickle(pickles.BOMBS["hashing a memo-shared tuple (no global)"])


def test_limits_hold_at_their_edge(monkeypatch):
    loads = SafePickleSerializer.loads

    def deep(levels: int) -> bytes:
        return pickle.PROTO + b"\x04" + pickles.nested(levels) + pickle.STOP

    assert loads(deep(MAX_DEPTH - 1)) is not None
    with pytest.raises(UnsafePickleError, match="nests deeper"):
        loads(deep(MAX_DEPTH + 1))
    assert loads(pickle.dumps(Decimal(f"{'9' * MAX_DIGITS}E+{MAX_EXPONENT - 1}"))) > 0
    for text_, rule in ((f"1E+{MAX_EXPONENT + 1}", "exponent"), (f"1E-{MAX_EXPONENT + 1}", "exponent"),
                        ("9" * (MAX_DIGITS + 1), "digits"), ("1_000", "plain text"), ("١٢", "plain text")):
        with pytest.raises(UnsafePickleError, match=rule):
            loads(forge(result=pickles.decimal_text(text_)))
    assert loads(pickle.dumps(Fraction(10**(MAX_DIGITS - 1), 3))) == Fraction(10**(MAX_DIGITS - 1), 3)
    with pytest.raises(UnsafePickleError, match="digits"):
        loads(forge(result=call(name("fractions", "Fraction"), text("1" * (MAX_DIGITS + 1) + "/3"))))
    colliding = [n * (2**61 - 1) for n in range(1, MAX_EQUAL_HASHES + 2)]
    assert len(loads(pickle.dumps(dict.fromkeys(colliding[:MAX_EQUAL_HASHES])))) == MAX_EQUAL_HASHES
    with pytest.raises(UnsafePickleError, match="hash flood"):
        loads(pickle.dumps(set(colliding)))
    shared = "x" * 1000  # 63 size units at each reference, in 2 bytes of pickle
    assert len(loads(pickle.dumps([shared] * 1000))) == 1000
    with pytest.raises(UnsafePickleError, match="refers to objects it already built"):
        loads(pickle.dumps([shared] * 20_000))
    monkeypatch.setenv("RQPLUS_MAX_PICKLE_BYTES", "2000")
    with pytest.raises(UnsafePickleError, match="the pickle is over the 2000 byte limit .2.* bytes read"):
        loads(pickle.dumps("x" * 2000))
    monkeypatch.setenv("RQPLUS_MAX_PICKLE_BYTES", "10")  # never below FAST_PATH_BYTES
    assert loads(pickle.dumps("x" * 500)) == "x" * 500


def test_numbers_from_text_are_bounded():
    for data, rule in ((b"I" + b"9" * (MAX_DIGITS + 10) + b"\n.", "a number of"),
                       (b"F" + b"1" * (MAX_DIGITS + 10) + b"\n.", "a number of"),
                       (forge(result=call(name("builtins", "int"), text("9" * (MAX_DIGITS + 10)))), "number's text"),
                       (forge(result=call(name("builtins", "float"), pickles.decimal_text("1"))), "decimal.Decimal object"),
                       (forge(result=call(name("datetime", "timedelta"), pickle.LONG1 + b"\x10" + b"\x01" * 16)),
                        "small plain value")):
        with pytest.raises(UnsafePickleError, match=rule):
            SafePickleSerializer.loads(data)
    assert SafePickleSerializer.loads(b"I12\n.") == 12 and SafePickleSerializer.loads(b"F1.5\n.") == 1.5


def test_it_writes_what_rqs_pickle_reads():
    assert SafePickleSerializer.dumps(PLAIN) == DefaultSerializer.dumps(PLAIN)
    assert DefaultSerializer.loads(SafePickleSerializer.dumps(PLAIN)) == PLAIN


@pytest.mark.parametrize("given, used", [
    (None, SafePickleSerializer), (DefaultSerializer, SafePickleSerializer), (pickle, SafePickleSerializer),
    ("pickle", SafePickleSerializer), ("rq.serializers.DefaultSerializer", SafePickleSerializer),
    (JSONSerializer, JSONSerializer), ("rq.serializers.JSONSerializer", JSONSerializer),
])
def test_workers_read_pickles_safely_whatever_names_rqs_pickle(given, used):
    assert worker_serializer(given) is used


def test_a_worker_reads_jobs_with_it(redis):
    from rqplus import Queue, Worker

    mine = Queue("mine", connection=redis)
    worker = Worker(["q", mine], connection=redis)
    assert worker.serializer is SafePickleSerializer
    assert all(queue.serializer is SafePickleSerializer for queue in worker.queues)
    assert mine.serializer is DefaultSerializer and mine.job_class.__name__ == "Job"  # the caller's queue is left alone
    json_worker = Worker(["q"], connection=redis, serializer=JSONSerializer)
    assert json_worker.serializer is JSONSerializer


def test_placeholders_stand_for_what_the_dashboard_does_not_import():
    loaded = RestrictedPickleSerializer.loads(pickle.dumps({"path": Path("/tmp"), "call": _Reduce(os.system, "x")}))
    assert isinstance(loaded["path"], Withheld) and repr(loaded["call"]) == "<not loaded: posix.system>"
    assert sorted(withheld_in(loaded)) == ["pathlib.PosixPath", "posix.system"]


def test_the_refusal_happens_in_a_fresh_interpreter_too(tmp_path):
    """No import made by the test process hides a path: a new process refuses the same forged pickle."""
    marker = tmp_path / "pwned"
    forged = tmp_path / "forged.pickle"
    forged.write_bytes(pickle.dumps(_Reduce(os.system, f"touch {marker}")))
    code = ("import sys; from rqplus.serializers import SafePickleSerializer as S\n"
            f"try: S.loads(open({str(forged)!r}, 'rb').read())\nexcept Exception as e: print(type(e).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "UnsafePickleError" and not marker.exists()
