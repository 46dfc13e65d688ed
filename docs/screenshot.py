"""Make ``docs/dashboard.png``, the README's picture of the dashboard's overview.

Run from the repository root, with the test extra installed and Debian's chromium:
``python docs/screenshot.py``. It starts the bundled nats-server, a worker and the dashboard on
free ports, sends jobs for about 20 seconds (some fail and are dead-lettered), and photographs
the overview. The tests never run it: the picture changes only when someone means it to.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["JSQ_TEST_PREFIX"] = "shot"

from jsqueue.wire.server import NatsServer  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.integration.support import free_port  # noqa: E402


async def main() -> None:
    from tests.apps.dashapp import app, nap, picky

    server = NatsServer().start()
    port = free_port()
    common = ["-A", "tests.apps.dashapp:app", "--url", server.url]
    logs = tempfile.mkdtemp(prefix="jsq-shot-")
    spawn = [
        [sys.executable, "-m", "jsqueue", "worker", *common, "-c", "8"],
        [sys.executable, "-m", "jsqueue", "dashboard", *common, "--port", str(port)],
    ]
    procs = [
        subprocess.Popen(args, cwd=ROOT, stdout=open(f"{logs}/{i}.log", "w"), stderr=-2)
        for i, args in enumerate(spawn)
    ]
    try:
        app.configure(url=server.url)
        async with app, httpx.AsyncClient() as client:
            for _ in range(100):
                try:
                    await client.get(f"http://127.0.0.1:{port}/static/dashboard.css")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            started = time.monotonic()
            while time.monotonic() - started < 20:
                wave = int(time.monotonic() - started)
                for _ in range(10 + 8 * (wave % 5)):
                    await nap.delay(0.2)
                if wave % 4 == 0:
                    await picky.delay(logs)
                await asyncio.sleep(0.5)
            for _ in range(40):
                await nap.apply_async((0.2,), queue="reports")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_timeout(2500)
            await page.screenshot(path=str(ROOT / "docs" / "dashboard.png"))
            await browser.close()
        print("wrote docs/dashboard.png")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
