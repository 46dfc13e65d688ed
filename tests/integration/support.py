"""Helpers shared by the integration tests that drive the CLI and worker processes."""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jsqueue import App
from jsqueue.testing import Process, destroy
from jsqueue.wire.server import NatsServer

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def app_of(
    module_name: str,
    server: NatsServer,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    **env: str,
) -> AsyncIterator[App]:
    """The app of ``tests.apps.<module_name>`` as the test process sees it: the same prefix
    (and ``env``) as the worker processes a test starts on it, reloaded so that it reads
    them, and destroyed (its streams and buckets) after."""
    monkeypatch.setenv("JSQ_TEST_PREFIX", prefix)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(ROOT))
    module = importlib.reload(importlib.import_module(f"tests.apps.{module_name}"))
    app: App = module.app
    app.configure(url=server.url)
    try:
        yield app
    finally:
        await destroy(app)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jsqueue(prefix: str, url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``jsqueue ARGS -A tests.apps.faulty:app --url URL`` with the test's prefix."""
    return subprocess.run(
        [sys.executable, "-m", "jsqueue", *args, "-A", "tests.apps.faulty:app", "--url", url],
        cwd=ROOT,
        env={**os.environ, "JSQ_TEST_PREFIX": prefix},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def worker_process(url: str, prefix: str, tmp: Path, *args: str, **env: str) -> Process:
    """A ``jsqueue worker`` process for the faulty app (not started yet: use ``with``)."""
    return Process.jsqueue(
        "worker",
        "-A",
        "tests.apps.faulty:app",
        "--url",
        url,
        *args,
        env={"JSQ_TEST_PREFIX": prefix, **env},
        cwd=ROOT,
        log_dir=tmp,
        name="worker",
    )


def procapp_worker(
    app: App, tmp: Path, *args: str, name: str = "worker", ack_wait: float = 5
) -> Process:
    return Process.jsqueue(
        "worker",
        "-A",
        "tests.apps.procapp:app",
        "--url",
        str(app.settings.url),
        *args,
        env={"JSQ_TEST_PREFIX": app.settings.prefix, "JSQ_TEST_ACK_WAIT": str(ack_wait)},
        cwd=ROOT,
        log_dir=tmp,
        name=name,
    )


def starts(marks: Path, job_id: str) -> list[tuple[int, float, int]]:
    """(pid, time, attempt) of each start a task marked."""
    path = marks / f"{job_id}.start"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(p), float(t), int(a)) for p, t, a in (line.split() for line in lines)]
