"""The ledger: proof that nothing was lost, in the way Jepsen checks a queue.

Producers record every enqueue they attempt and what the server said (acked, error, unknown);
tasks record every start and finish. Records are JSON lines appended with ``os.write`` to one
file per process in a shared directory, so they survive ``SIGKILL`` of the process that wrote
them. After the system has drained, :meth:`Ledger.check` compares the two sides and the dead
letters:

- ``lost`` = acked - (finished | dead-lettered): must be empty;
- ``unexpected`` = (finished | dead-lettered) - attempted: nothing runs that nobody enqueued;
- ``duplicates``: jobs finished more than once (allowed only where a kill hit between a side
  effect and its ack; the scenario says so).

Use it on your own deployment: give producers a ``Ledger`` and have tasks call
``ledger.started(job_id)`` / ``ledger.finished(job_id)``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jsqueue.errors import PublishError

T = TypeVar("T")


@dataclass
class LedgerReport:
    """What the ledger found. ``ok`` is true when nothing was lost or unexpected."""

    attempted: int
    acked: int
    errors: int
    unknown: int
    finished: int
    dead_lettered: int
    lost: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)
    duplicates: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected

    def summary(self) -> str:
        return (
            f"attempted {self.attempted}, acked {self.acked}, errors {self.errors}, unknown "
            f"{self.unknown}; finished {self.finished}, dead-lettered {self.dead_lettered}; lost "
            f"{len(self.lost)}, unexpected {len(self.unexpected)}, duplicated "
            f"{len(self.duplicates)}"
        )


class Ledger:
    """Append-only event files in ``directory``, one per process."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._pid = -1

    def _write(self, event: str, job_id: str, **extra: Any) -> None:
        if self._fd is None or self._pid != os.getpid():  # a forked child gets its own file
            self._pid = os.getpid()
            path = self.directory / f"ledger-{self._pid}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        line = json.dumps({"e": event, "id": job_id, "pid": self._pid, "t": time.time(), **extra})
        os.write(self._fd, (line + "\n").encode())  # one write: whole lines, kept across kills

    # -- producers ---------------------------------------------------------------------------

    async def enqueue(self, job_id: str, sending: Awaitable[T]) -> T | None:
        """Record an enqueue of ``job_id`` around ``sending`` (an ``apply_async`` awaitable).

        The outcome is "acked" when the server stored it, "error" when it said no, and
        "unknown" when the answer never came (the job may or may not be stored).
        """
        self._write("attempted", job_id)
        try:
            result = await sending
        except PublishError as exc:
            self._write(
                "unknown" if "may or may not" in str(exc) else "error", job_id, why=str(exc)
            )
            return None
        except Exception as exc:
            self._write("error", job_id, why=f"{type(exc).__name__}: {exc}")
            return None
        self._write("acked", job_id)
        return result

    def attempted(self, job_id: str) -> None:
        self._write("attempted", job_id)

    def acked(self, job_id: str) -> None:
        self._write("acked", job_id)

    # -- tasks ---------------------------------------------------------------------------------

    def started(self, job_id: str) -> None:
        self._write("started", job_id)

    def finished(self, job_id: str) -> None:
        self._write("finished", job_id)

    # -- reading -------------------------------------------------------------------------------

    def events(self) -> Iterator[dict[str, Any]]:
        for path in sorted(self.directory.glob("ledger-*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():  # a process killed mid-line leaves nothing partial: one write
                    yield json.loads(line)

    def check(self, dead_lettered: Iterable[str] = ()) -> LedgerReport:
        """Compare producers, tasks and dead letters."""
        by_kind: dict[str, Counter[str]] = {}
        for event in self.events():
            by_kind.setdefault(event["e"], Counter())[event["id"]] += 1
        attempted = set(by_kind.get("attempted", ()))
        acked = set(by_kind.get("acked", ()))
        finished = by_kind.get("finished", Counter())
        dead = set(dead_lettered)
        return LedgerReport(
            attempted=len(attempted),
            acked=len(acked),
            errors=len(by_kind.get("error", ())),
            unknown=len(by_kind.get("unknown", ())),
            finished=len(finished),
            dead_lettered=len(dead),
            lost=acked - set(finished) - dead,
            unexpected=(set(finished) | dead) - attempted,
            duplicates={job: n for job, n in finished.items() if n > 1},
        )

    def times(self, event: str) -> dict[str, list[float]]:
        """When each job had ``event`` (e.g. every start of every job)."""
        found: dict[str, list[float]] = {}
        for record in self.events():
            if record["e"] == event:
                found.setdefault(record["id"], []).append(record["t"])
        return found
