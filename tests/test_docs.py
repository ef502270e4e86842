"""The README and docs/*.md: every ``rqplus.X`` they name is importable as such, and every Python
example runs as written against a private durable Redis (the documented local URL
``redis://127.0.0.1:6379/0`` and ``$REDIS_URL`` point at it); an example that raises fails here.

Names an example takes from the text around it (``queue``, ``report``, ``redis``, ``uploads``,
``app``, ``password``) are given in :func:`givens`.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from flask import Flask
from redis import Redis

import rqplus
from rqplus import Queue
from rqplus.embedded import DURABLE_CONFIG, RedisServer
from tests.conftest import ROOT
from tests.jobs import record

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
NAME = re.compile(r"\brqplus(?:\.[A-Za-z_]\w*)+")
LOCAL_URL = "redis://127.0.0.1:6379/0"


def examples() -> list[tuple[str, str]]:
    """``(page:line, code)`` for each Python block of each page."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in BLOCK.finditer(text):
            found.append((f"{page.name}:{text.count(chr(10), 0, block.start()) + 1}", block.group(1)))
    return found


def documented_names() -> list[str]:
    """Every dotted ``rqplus.X...`` name in the pages' text and code."""
    return sorted({name for page in PAGES for name in NAME.findall(page.read_text())})


def resolve(name: str) -> Any:
    """The object a dotted name documents: its longest importable module, then attributes; a name
    right under ``rqplus`` that is no module must be exported (``rqplus.__all__``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        if end == 1:
            assert parts[1] in rqplus.__all__, f"{name} is documented but rqplus does not export {parts[1]}"
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise AssertionError(f"{name}: nothing of it imports")


@pytest.mark.parametrize("name", documented_names())
def test_documented_names_import(name):
    assert resolve(name) is not None


def test_the_name_walk_sees_the_exports():
    assert {"rqplus.DurabilityError", "rqplus.Queue", "rqplus.Worker", "rqplus.priority_of"} <= set(documented_names())


def givens(redis: Redis) -> dict[str, Any]:
    """What the text around the examples defines: a queue, a job function, a client, a Flask app."""
    return {
        "redis": redis, "Queue": Queue, "queue": Queue("default", connection=redis), "report": record,
        "timedelta": timedelta, "uploads": [SimpleNamespace(name="a.pdf"), SimpleNamespace(name="b.png")],
        "app": Flask("host_app"), "password": "a long dashboard password", "__name__": "docs_example",
    }


@pytest.fixture(scope="module")
def durable_server() -> Iterator[RedisServer]:
    """A private Redis with AOF and noeviction: the payments example enqueues to a durable queue."""
    with RedisServer(config=DURABLE_CONFIG) as server:
        yield server


@pytest.mark.parametrize("where, code", examples(), ids=[where for where, _ in examples()])
def test_python_examples_run(where, code, durable_server, monkeypatch):
    redis = durable_server.client()
    redis.flushall()
    url = f"redis://127.0.0.1:{durable_server.port}/0"
    monkeypatch.setenv("REDIS_URL", url)
    code = code.replace(LOCAL_URL, url)
    assert ":6379" not in code, f"{where} names a Redis on port 6379 other than {LOCAL_URL}: not run"
    exec(compile(code, where, "exec"), givens(redis))
    if re.search(r"\.enqueue|enqueue_\w+\(|log_event\(", code):
        assert redis.dbsize(), f"{where} wrote nothing to the private Redis"
    redis.close()
