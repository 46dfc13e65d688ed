"""The CPU-bound work of the pool benchmarks: pure Python, holding the GIL the whole time.

Only the standard library is imported, so the task modules of every peer can use it. The harness
calibrates ``spin``'s size once per run (:func:`calibrate`) and sends that size with each job, so
every peer does exactly the same work.
"""

from __future__ import annotations

import time


def spin(n: int) -> int:
    """``n`` rounds of integer arithmetic in the interpreter (no C call that drops the GIL)."""
    x = 0
    for k in range(n):
        x = (x + k * k) % 1_000_003
    return x


def calibrate(seconds: float = 0.020, rounds: int = 5) -> int:
    """The ``n`` for which :func:`spin` takes about ``seconds`` here (the fastest of a few
    tries, so that a busy moment on a shared machine does not shrink the work)."""
    probe = 50_000
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        spin(probe)
        best = min(best, time.perf_counter() - started)
    return max(1, round(probe * seconds / best))
