"""The harness side of :mod:`bench.record`: a record dir per measurement, waiting, checking."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.record import DIR_ENV, RECORD


class CheckFailed(RuntimeError):
    """Jobs ran twice, never, or with ids nobody sent."""


@dataclass(frozen=True)
class Records:
    """The records of one measurement, by job id (each id checked to appear exactly once)."""

    started: dict[int, float]
    finished: dict[int, float]

    @property
    def first_start(self) -> float:
        return min(self.started.values())

    @property
    def last_finish(self) -> float:
        return max(self.finished.values())

    def rate(self) -> float:
        """Jobs per second from the first job's start to the last job's finish."""
        return len(self.started) / max(self.last_finish - self.first_start, 1e-9)


class Recording:
    """A fresh record dir; pass :attr:`env` to the worker processes of one measurement."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="jsqueue-bench-rec-"))

    @property
    def env(self) -> dict[str, str]:
        return {DIR_ENV: str(self.path)}

    def count(self) -> int:
        """Records written so far (from file sizes: cheap enough to poll)."""
        return sum(entry.stat().st_size for entry in os.scandir(self.path)) // RECORD.size

    async def wait(
        self, n: int, timeout: float, alive: Callable[[], None] | None = None, poll: float = 0.01
    ) -> None:
        """Wait until ``n`` records exist; ``alive`` raises if the workers died meanwhile."""
        deadline = time.monotonic() + timeout
        last_check = 0.0
        while (have := self.count()) < n:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{have} of {n} jobs recorded after {timeout:.0f}s")
            if alive is not None and now - last_check > 0.5:
                alive()
                last_check = now
            await asyncio.sleep(poll)

    def raw(self) -> Iterator[tuple[int, float, float]]:
        for file in sorted(self.path.glob("*.rec")):
            data = file.read_bytes()
            usable = len(data) - len(data) % RECORD.size
            yield from RECORD.iter_unpack(data[:usable])

    def check(self, expected: range, *, exact: bool = True) -> Records:
        """Every id in ``expected`` ran exactly once, and no other id ran.

        With ``exact=False`` (a backlog only partly drained) ids may be missing, but none may
        have run twice or be unknown.
        """
        started: dict[int, float] = {}
        finished: dict[int, float] = {}
        twice: list[int] = []
        unknown: list[int] = []
        for i, start, finish in self.raw():
            if i not in expected:
                unknown.append(i)
            elif i in started:
                twice.append(i)
            else:
                started[i], finished[i] = start, finish
        problems = []
        if twice:
            problems.append(f"{len(twice)} job(s) ran more than once (e.g. {twice[:5]})")
        if unknown:
            problems.append(f"{len(unknown)} unknown id(s) ran (e.g. {unknown[:5]})")
        if exact and len(started) != len(expected):
            missing = [i for i in expected if i not in started]
            problems.append(f"{len(missing)} job(s) never ran (e.g. {missing[:5]})")
        if problems:
            raise CheckFailed("; ".join(problems))
        return Records(started, finished)

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
