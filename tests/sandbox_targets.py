"""Functions the sandbox tests run in a child process (a light module: the child imports it by name)."""

from __future__ import annotations

import time


def spin(seconds: float) -> str:
    """Pure Python that holds the GIL, as a runaway generator or regex would."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "done"


def count_to(n: int, progress=None) -> int:
    for i in range(1, n + 1):
        progress(i / n, f"{i} of {n}")
    return n


def hog(mb: int) -> int:
    return len(bytearray(mb * 2**20))
