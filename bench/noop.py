"""The job function the benchmarks enqueue and drain, by path: ``"bench.noop.noop"``."""


def noop(*args: object, **kwargs: object) -> None:
    """Do nothing (whatever the arguments), so a drain measures queue and worker overhead only."""
    return None
