"""Test helpers and a pytest plugin: real nats-servers, apps with a unique prefix, workers.

Enable the fixtures with ``pytest_plugins = ["jsqueue.testing"]`` in a ``conftest.py``:

- ``nats_server``: one bundled nats-server with JetStream per test session, on a port the server
  picks, with a temporary store dir; stopped by PID at the end of the session.
- ``jsq_prefix``: a unique wire prefix per test, so tests sharing the server never see each
  other's jobs.
- ``jsq_app``: an :class:`~jsqueue.App` on that server and prefix; closed, and its streams and
  buckets removed, after the test.

Also here: :class:`Ledger` (prove nothing was lost), :class:`NatsCluster` (three servers on
loopback), :class:`Process` (a child process stopped by PID) and :func:`burst`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from jsqueue.app import App
from jsqueue.services.handles import AsyncResult
from jsqueue.services.results import JobState
from jsqueue.testing.ledger import Ledger, LedgerReport
from jsqueue.wire import Broker
from jsqueue.wire.cluster import NatsCluster
from jsqueue.wire.server import NatsServer
from jsqueue.worker import Worker, WorkerStats

F = TypeVar("F", bound=Callable[..., Any])


def fixture(scope: str = "function") -> Callable[[F], F]:
    """``pytest.fixture`` when pytest is installed; the helpers here work without it."""

    def mark(func: F) -> F:
        try:
            import pytest
        except ImportError:
            return func
        return cast(F, pytest.fixture(scope=scope)(func))  # type: ignore[call-overload]

    return mark


__all__ = [
    "Ledger",
    "LedgerReport",
    "NatsCluster",
    "NatsServer",
    "Process",
    "burst",
    "destroy",
    "running_worker",
    "unique_prefix",
    "wait_state",
]


def unique_prefix() -> str:
    """A fresh wire prefix such as ``t3f9c01a2b4``."""
    return f"t{uuid.uuid4().hex[:10]}"


@fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A bundled nats-server with JetStream for the whole test session."""
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@fixture()
def jsq_prefix() -> str:
    return unique_prefix()


@fixture()
async def jsq_app(nats_server: NatsServer, jsq_prefix: str) -> AsyncIterator[App]:
    """An app on the session server with a unique prefix; torn down after the test."""
    app = App("test", url=nats_server.url, prefix=jsq_prefix)
    try:
        yield app
    finally:
        await destroy(app)


async def destroy(app: App) -> None:
    """Close the app everywhere and delete every stream and bucket of its prefix."""
    app.close_sync()
    await app.close()
    broker = Broker(dataclasses.replace(app.settings, provision=False))
    await broker.connect()
    try:
        await broker.destroy_prefix()
    finally:
        await broker.close()


@contextlib.asynccontextmanager
async def running_worker(app: App, **options: Any) -> AsyncIterator[Worker]:
    """Run a worker in this event loop for the duration of the block; stop it after."""
    worker = Worker(app, **options)
    task = asyncio.create_task(worker.run())
    started = asyncio.create_task(worker.started.wait())
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED, timeout=30)
    if task in done:
        started.cancel()
        task.result()  # raises the reason it stopped
    if started not in done:
        task.cancel()
        raise TimeoutError("the worker did not start within 30s")
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=60)


async def burst(app: App, **options: Any) -> WorkerStats:
    """Run a burst worker: process everything queued (retries included, but for those long
    enough to wait on a server schedule), then return."""
    return await Worker(app, burst=True, **options).run()


async def wait_state(job: AsyncResult[Any], state: JobState, timeout: float = 10.0) -> None:
    """Wait until ``job`` is in ``state`` (checked every 10 ms), or raise TimeoutError."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (current := await job.state()) is not state:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"job {job.id} is {current}, not {state}, after {timeout}s")
        await asyncio.sleep(0.01)


async def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Wait until ``predicate()`` is true (checked every 20 ms), or raise TimeoutError naming
    ``what`` was awaited: for outside evidence such as files, logs and ledgers."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Process:
    """A child process (a worker, a beat, a producer) that a test starts and must stop by PID.

    Use as a context manager: it is killed on exit even when the test fails. Output goes to a
    log file in ``log_dir``, which :meth:`output` reads back.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        log_dir: Path,
        name: str = "proc",
    ) -> None:
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.cwd = str(cwd) if cwd else None
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def jsqueue(cls, *args: str, **kwargs: Any) -> Process:
        """``python -m jsqueue <args>`` with this interpreter."""
        return cls([sys.executable, "-m", "jsqueue", *args], **kwargs)

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
