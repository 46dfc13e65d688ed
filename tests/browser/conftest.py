"""Fixtures of the dashboard's tests: the dashboard app, a worker and the dashboard as real
processes, and Debian's chromium driven by Playwright (skipped, saying why, where it is absent)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jsqueue import App
from jsqueue.testing import Process
from jsqueue.wire.server import NatsServer
from tests.integration.support import app_of

from .support import ROOT, Dashboard, start_dashboard

CHROMIUM = os.environ.get("JSQ_CHROMIUM", "/usr/bin/chromium")
#: no outside network here: without these chromium keeps retrying connections
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
async def dashapp(
    nats_server: NatsServer, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    """The dashboard tests' app as the test process sees it (its processes share the prefix)."""
    async with app_of("dashapp", nats_server, jsq_prefix, monkeypatch) as app:
        yield app


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


@pytest.fixture
def worker(dashapp: App, tmp_path: Path) -> Iterator[Process]:
    """A real worker process for the dashboard app, stopped by PID after the test."""
    with Process.jsqueue(
        "worker",
        "-A",
        "tests.apps.dashapp:app",
        "--url",
        str(dashapp.settings.url),
        "-c",
        "4",
        env={"JSQ_TEST_PREFIX": dashapp.settings.prefix},
        cwd=ROOT,
        log_dir=tmp_path,
        name="worker",
    ) as process:
        yield process


@pytest.fixture
async def dashboard(dashapp: App, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start ``jsqueue dashboard`` processes with the given options; each is stopped after."""
    started: list[Dashboard] = []

    async def start(*args: str) -> Dashboard:
        board = await start_dashboard(dashapp, tmp_path, *args)
        started.append(board)
        return board

    try:
        yield start
    finally:
        for board in started:
            board.process.kill()


@pytest.fixture
def expect() -> Any:
    """Playwright's ``expect``, patient enough for a loaded 2-core machine."""
    found = pytest.importorskip("playwright.async_api", reason="needs playwright").expect
    found.set_options(timeout=15_000)
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Debian chromium under Playwright."""
    playwright_api = pytest.importorskip("playwright.async_api", reason="needs playwright")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    async with playwright_api.async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await asyncio.wait_for(launched.close(), 30)
