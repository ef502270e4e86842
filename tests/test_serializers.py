"""rqplus/serializers.py: the worker's unpickler builds plain data, standard data classes and classes
of allowed modules; anything else is refused before it is imported or called."""

from __future__ import annotations

import collections
import io
import os
import pickle
import subprocess
import sys
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path, PurePosixPath
from uuid import UUID

import pytest
from rq.serializers import DefaultSerializer, JSONSerializer

from rqplus.exceptions import UnsafePickleError
from rqplus.serializers import SafePickleSerializer, worker_serializer
from tests import jobs

PLAIN = {
    "text": "é", "bytes": b"\x00\xff", "int": 2**70, "float": 1.5, "none": None, "bool": True, "list": [1, [2]],
    "tuple": (1, 2), "set": {1, 2}, "frozenset": frozenset({3}), "complex": 1j, "slice": slice(1, 2), "date": date(2026, 11, 30), "time": time(13, 0),
    "datetime": datetime(2026, 11, 30, 13, 0, tzinfo=timezone(timedelta(hours=1))), "delta": timedelta(days=2),
    "decimal": Decimal("12.50"), "fraction": Fraction(1, 3), "uuid": UUID(int=7),
    "ordered": collections.OrderedDict(a=1), "deque": collections.deque([1, 2]), "counter": collections.Counter("aab"),
    "defaultdict": collections.defaultdict(list, {"a": [1]}), "chainmap": collections.ChainMap({"a": 1}),
}


@pytest.mark.parametrize("protocol", [2, 3, 4, pickle.HIGHEST_PROTOCOL])
def test_plain_data_and_standard_data_classes_load_as_pickle_loads_them(protocol):
    assert SafePickleSerializer.loads(pickle.dumps(PLAIN, protocol=protocol)) == PLAIN


def test_bytearrays_load_as_rq_pickles_them_but_no_global_builds_large_data():
    assert SafePickleSerializer.loads(DefaultSerializer.dumps(bytearray(b"ab"))) == bytearray(b"ab")
    for amplifier in (_Reduce(list, range(10**12)), _Reduce(bytes, 10**12), _Reduce(bytearray, 10**12)):
        with pytest.raises(UnsafePickleError, match="builtins.(range|bytes|bytearray), which is not loaded"):
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


def _global(module: str, name: str) -> bytes:
    """A protocol-4 pickle of ``module.name``: STACK_GLOBAL as a forger writes it (any dotted name)."""
    return (pickle.PROTO + b"\x04" + pickle.SHORT_BINUNICODE + bytes([len(module)]) + module.encode()
            + pickle.SHORT_BINUNICODE + bytes([len(name)]) + name.encode() + pickle.STACK_GLOBAL + pickle.STOP)


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
    ("copyreg", "_reconstructor", "not loaded"),
])
def test_globals_outside_the_rules_are_refused(module, name, rule, tmp_path, monkeypatch):
    canary = tmp_path / "canary"
    monkeypatch.setenv("CANARY_PATH", str(canary))
    with pytest.raises(UnsafePickleError, match=rule):
        SafePickleSerializer.loads(_global(module, name))
    assert not canary.exists()


def test_persistent_ids_are_refused():
    class Persist(pickle.Pickler):
        def persistent_id(self, obj):
            return "x" if obj == "secret" else None

    buffer = io.BytesIO()
    Persist(buffer).dump(["secret"])
    with pytest.raises(UnsafePickleError, match="persistent id"):
        SafePickleSerializer.loads(buffer.getvalue())


def test_further_classes_are_allowed_by_name_only(monkeypatch):
    data = pickle.dumps(PurePosixPath("/a"))
    with pytest.raises(UnsafePickleError, match="RQPLUS_PICKLE_CLASSES"):
        SafePickleSerializer.loads(data)
    monkeypatch.setenv("RQPLUS_PICKLE_CLASSES", "pathlib.PurePosixPath, pathlib.Path")
    assert SafePickleSerializer.loads(data) == PurePosixPath("/a")
    with pytest.raises(UnsafePickleError):
        SafePickleSerializer.loads(pickle.dumps(_Reduce(os.system, "true")))


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


def test_the_refusal_happens_in_a_fresh_interpreter_too(tmp_path):
    """No import made by the test process hides a path: a new process refuses the same forged pickle."""
    marker = tmp_path / "pwned"
    forged = tmp_path / "forged.pickle"
    forged.write_bytes(pickle.dumps(_Reduce(os.system, f"touch {marker}")))
    code = ("import sys; from rqplus.serializers import SafePickleSerializer as S\n"
            f"try: S.loads(open({str(forged)!r}, 'rb').read())\nexcept Exception as e: print(type(e).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    assert out.strip() == "UnsafePickleError" and not marker.exists()
