"""The fault suite's scenario fixture: its own nats-server, worker processes, a ledger."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jsqueue.wire.server import NatsServer
from tests.harness import LedgeredSystem


@dataclass(kw_only=True)
class Scenario(LedgeredSystem):
    server: NatsServer

    @property
    def url(self) -> str:
        return self.server.url

    def set_ack_wait(self, seconds: float) -> None:
        """The same ack_wait for this process's app and the workers it starts."""
        self.env["JSQ_TEST_ACK_WAIT"] = str(seconds)
        self.app.configure(ack_wait=seconds)

    async def drained(self, queue: str = "default", timeout: float = 60) -> None:
        """Wait until the queue has nothing ready and nothing unacked."""
        broker = await self.app.broker()
        deadline = time.monotonic() + timeout
        while True:
            info = await broker.streams.consumer(queue)
            if info is not None and not info.pending and not info.ack_pending:
                return
            assert time.monotonic() < deadline, f"queue {queue} did not drain: {info}"
            await asyncio.sleep(0.1)


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
    found = Scenario(server=server, app=module.app, ledger=module.ledger, tmp=tmp_path, env=env)
    try:
        yield found
    finally:
        for proc in found.processes:
            proc.kill()
        await module.app.close()
        module.app.close_sync()
        server.cleanup()
