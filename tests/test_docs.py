"""docs/*.md: every Python example runs as written (against a private Redis where it needs one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    """``(page:block number, code)`` for each Python block of each docs page."""
    return [(f"{page.name}:{number}", code) for page in sorted(DOCS.glob("*.md"))
            for number, code in enumerate(BLOCK.findall(page.read_text()), 1)]


@pytest.mark.parametrize("where, code", examples(), ids=[where for where, _ in examples()])
def test_python_examples_run(where, code, redis):
    exec(compile(code, where, "exec"), {"redis": redis, "__name__": "docs_example"})
