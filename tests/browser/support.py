"""Starting ``jsqueue dashboard`` as a process on a free port and waiting until it answers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import httpx

from jsqueue import App
from jsqueue.testing import Process

from ..integration.support import ROOT, free_port

__all__ = ["ROOT", "Dashboard", "start_dashboard"]


@dataclass
class Dashboard:
    process: Process
    url: str

    def output(self) -> str:
        return self.process.output()


async def start_dashboard(app: App, log_dir: Path, *args: str, timeout: float = 30) -> Dashboard:
    """``jsqueue dashboard -A tests.apps.dashapp:app ARGS`` on a free port, once it answers."""
    port = free_port()
    process = Process.jsqueue(
        "dashboard",
        "-A",
        "tests.apps.dashapp:app",
        "--url",
        str(app.settings.url),
        "--port",
        str(port),
        *args,
        env={"JSQ_TEST_PREFIX": app.settings.prefix},
        cwd=ROOT,
        log_dir=log_dir,
        name="dashboard",
    ).start()
    url = f"http://127.0.0.1:{port}"
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            if process.proc is not None and process.proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited: {process.output()}")
            try:
                await client.get(f"{url}/static/dashboard.css", timeout=2)
                return Dashboard(process, url)
            except httpx.TransportError:
                if asyncio.get_running_loop().time() > deadline:
                    process.kill()
                    raise TimeoutError(f"no answer: {process.output()}") from None
                await asyncio.sleep(0.1)
