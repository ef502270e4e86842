"""The job function the benchmarks enqueue and drain, by path: ``"bench.noop.noop"``."""


def noop() -> None:
    """Do nothing, so a drain measures queue and worker overhead only."""
    return None
