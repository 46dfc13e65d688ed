"""What the harness needs from each system it measures."""

from __future__ import annotations

import sys
from typing import ClassVar


class Peer:
    """One task-queue system on one broker, driven from the harness's event loop.

    Producer calls (``send``, ``send_bulk``) use the system's public client API; workers are the
    system's own worker command, started as processes by the harness. Every task records its
    job id with :func:`bench.record.record`.
    """

    key: ClassVar[str]
    title: ClassVar[str]
    #: How the system is configured here, for the results table.
    settings: ClassVar[str]
    #: The bulk enqueue call used, or None if the system has none (the loop fills backlogs).
    bulk: ClassVar[str | None] = None
    #: Where results are stored in the "drain with results" run, or None if not measured.
    results: ClassVar[str | None] = None

    def unavailable(self) -> str | None:
        """Why this peer cannot run here (e.g. its server is unreachable), or None."""
        return None

    async def open(self) -> None:
        """Connect the producer side."""

    async def close(self) -> None:
        """Disconnect, and delete the queues, streams and keys this peer created."""

    async def send(self, i: int, *, results: bool = False) -> None:
        """Enqueue job ``i`` with the system's one-job call, waiting as that call waits."""
        raise NotImplementedError

    async def send_bulk(self, ids: range, *, results: bool = False) -> None:
        """Enqueue many jobs with the system's bulk API (only if :attr:`bulk` is set)."""
        raise NotImplementedError(f"{self.title} has no bulk enqueue")

    async def describe(self) -> str:
        """The broker's view of the queue, added to timeout errors (optional)."""
        return ""

    async def purge(self) -> None:
        """Remove every queued job (between measurements; workers are stopped)."""
        raise NotImplementedError

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        """Commands that run ``procs`` worker processes (one command may fork several);
        ``latency`` is set for the latency run, where the worker waits idle for single jobs."""
        raise NotImplementedError


def python_m(module: str, *args: str) -> list[str]:
    """``python -m module args`` with the harness's interpreter (the bench venv)."""
    return [sys.executable, "-m", module, *args]
