"""The fault suite's scenario fixture: its own nats-server, worker processes, a ledger."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jsqueue import App
from jsqueue import dlq as dead_letters
from jsqueue.ledger import Ledger
from jsqueue.server import NatsServer
from jsqueue.testing import Process

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Scenario:
    server: NatsServer
    app: App
    ledger: Ledger
    tmp: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)

    def set_ack_wait(self, seconds: float) -> None:
        """The same ack_wait for this process's app and the workers it starts."""
        self.env["JSQ_TEST_ACK_WAIT"] = str(seconds)
        self.app.configure(ack_wait=seconds)

    def worker(self, *args: str, name: str = "worker") -> Process:
        """Start a worker process of the ledgered app (killed at the end of the test)."""
        proc = Process.jsqueue(
            "worker",
            "-A",
            "tests.apps.ledgered:app",
            "--url",
            self.server.url,
            *args,
            env=self.env,
            cwd=ROOT,
            log_dir=self.tmp,
            name=name,
        ).start()
        self.processes.append(proc)
        return proc

    @contextmanager
    def workers(self, count: int, *args: str) -> Iterator[list[Process]]:
        procs = [self.worker(*args, name=f"worker{i}") for i in range(count)]
        try:
            yield procs
        finally:
            for proc in procs:
                proc.stop()

    async def drained(self, queue: str = "default", timeout: float = 60) -> None:
        """Wait until the queue has nothing ready and nothing unacked."""
        broker = await self.app.broker()
        deadline = time.monotonic() + timeout
        while True:
            info = await broker.consumer_info(queue)
            if info is not None and not info.num_pending and not info.num_ack_pending:
                return
            assert time.monotonic() < deadline, f"queue {queue} did not drain: {info}"
            await asyncio.sleep(0.1)

    async def dead_ids(self) -> set[str]:
        return {
            letter.job_id for letter in await dead_letters.list_letters(await self.app.broker())
        }


@pytest.fixture
async def scenario(
    tmp_path: Path, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Scenario]:
    ledger_dir = tmp_path / "ledger"
    env = {
        "JSQ_TEST_PREFIX": jsq_prefix,
        "JSQ_LEDGER_DIR": str(ledger_dir),
        "JSQ_TEST_ACK_WAIT": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import tests.apps.ledgered as module

    module = importlib.reload(module)
    server = NatsServer(store_dir=tmp_path / "store").start()
    module.app.configure(url=server.url)
    found = Scenario(server, module.app, module.ledger, tmp_path, env)
    try:
        yield found
    finally:
        for proc in found.processes:
            proc.kill()
        await module.app.close()
        module.app.close_sync()
        server.cleanup()
