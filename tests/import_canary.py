"""A module that must never be imported by a worker: importing it creates the file $CANARY_PATH."""

import os
from pathlib import Path

Path(os.environ.get("CANARY_PATH", "/nonexistent/canary")).touch()


def run() -> None:
    """Never reached by an rqplus worker."""
