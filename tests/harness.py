"""What the fault and cluster suites share: the ledgered app, its ledger, and the processes a test
starts (each stopped by PID when the test ends, even when it fails)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from jsqueue import App
from jsqueue.services import dlq as dead_letters
from jsqueue.testing import Process
from jsqueue.testing.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]


@dataclass(kw_only=True)
class LedgeredSystem:
    app: App
    ledger: Ledger
    tmp: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    #: options every worker of this system gets
    worker_args: ClassVar[tuple[str, ...]] = ()

    @property
    def url(self) -> str:
        raise NotImplementedError

    def process(
        self, command: str, *args: str, url: str | None = None, name: str = "proc"
    ) -> Process:
        """Start ``jsqueue COMMAND -A tests.apps.ledgered:app --url URL ARGS``."""
        proc = Process.jsqueue(
            command,
            "-A",
            "tests.apps.ledgered:app",
            "--url",
            url or self.url,
            *args,
            env=self.env,
            cwd=ROOT,
            log_dir=self.tmp,
            name=name,
        ).start()
        self.processes.append(proc)
        return proc

    def worker(self, *args: str, name: str = "worker") -> Process:
        """Start a worker process of the ledgered app."""
        return self.process("worker", *self.worker_args, *args, name=name)

    @contextmanager
    def workers(self, count: int = 2, *args: str) -> Iterator[list[Process]]:
        procs = [self.worker(*args, name=f"worker{i}") for i in range(count)]
        try:
            yield procs
        finally:
            for proc in procs:
                proc.stop()

    async def dead_ids(self) -> set[str]:
        broker = await self.app.broker()
        return {letter.job_id for letter in await dead_letters.list_letters(broker)}
