"""Who may look and act: basic auth, a token with a login form, read-only mode, cross-site and
wrong-Host requests, and a refused bind; in chromium where a browser is the point."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from jsqueue import App
from jsqueue.wire.server import NatsServer

from .support import ROOT, start_dashboard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TOKEN = "t0ken-for-tests"
DASHBOARD = [sys.executable, "-m", "jsqueue", "dashboard", "--url", "nats://127.0.0.1:1"]


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_basic_auth_wrong_password_gets_401_and_actions_need_the_pages_csrf_token(
    dashapp: App, dashboard: Callable[..., Any], browser: Any, expect: Any
) -> None:
    board = await dashboard("--auth", "admin:s3cret")
    wrong = await browser.new_context(http_credentials={"username": "admin", "password": "nope"})
    response = await (await wrong.new_page()).goto(board.url + "/")
    assert response.status == 401

    right = await browser.new_context(http_credentials={"username": "admin", "password": "s3cret"})
    page = await right.new_page()
    response = await page.goto(board.url + "/")
    assert response.status == 200
    await expect(page.locator("#live")).to_have_class("live on", timeout=15_000)
    # the browser sends basic auth by itself: a POST without the page's token is refused
    forged = await page.evaluate(
        """async () => (await fetch('/api/queues/default/pause', {method: 'POST'})).status"""
    )
    assert forged == 403
    sent = await page.evaluate("""async () => (await jsq.post('/api/queues/default/pause')).ok""")
    assert sent is True
    async with httpx.AsyncClient(base_url=board.url) as client:
        assert (await client.get("/api/overview")).status_code == 401
        assert (await client.get("/api/overview", headers=basic("admin", "x"))).status_code == 401
        ok = await client.get("/api/queues", headers=basic("admin", "s3cret"))
        assert [q["paused"] for q in ok.json() if q["queue"] == "default"] == [True]
        cross = await client.post(
            "/api/queues/default/resume",
            headers={**basic("admin", "s3cret"), "Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
        assert "cross-site" in cross.json()["error"]


async def test_read_only_token_mode_logs_in_by_form_shows_no_actions_and_refuses_a_forged_post(
    dashapp: App, dashboard: Callable[..., Any], browser: Any, expect: Any
) -> None:
    from tests.apps.dashapp import nap

    await nap.delay(1)  # a queue to show
    board = await dashboard("--read-only", "--token", TOKEN)
    page = await browser.new_page()
    await page.goto(board.url + "/")
    assert page.url.endswith("/login")
    await page.fill("#token", "wrong-token")
    await page.click("#login-submit")
    await expect(page.locator("#wrong")).to_have_text("wrong token")
    await page.fill("#token", TOKEN)
    await page.click("#login-submit")
    await expect(page.locator('#queues tr[data-queue="default"] .ready')).to_have_text("1")
    assert TOKEN not in page.url
    cookies = await page.context.cookies()
    assert [c["httpOnly"] for c in cookies] == [True]
    assert TOKEN not in cookies[0]["value"]
    assert await page.locator("button").count() == 1  # "Log out" only
    await page.goto(board.url + "/dlq")
    assert await page.locator("button").count() == 1
    status = await page.evaluate("""async () => (await jsq.post('/api/queues/default/purge',
        {confirm: 'default'})).data.error""")
    assert "read-only" in status
    async with httpx.AsyncClient(base_url=board.url) as client:
        assert (await client.get("/api/overview")).status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/api/overview", headers=bearer)).status_code == 200
        refused = await client.post("/api/queues/default/purge", headers=bearer, json={})
        assert refused.status_code == 403
        queues = (await client.get("/api/queues", headers=bearer)).json()
        assert [q["ready"] for q in queues if q["queue"] == "default"] == [1]  # nothing removed
    await page.click("text=Log out")
    await page.goto(board.url + "/workers")
    assert page.url.endswith("/login")


async def test_a_wrong_host_header_is_refused_when_open_on_loopback(
    dashapp: App, dashboard: Callable[..., Any]
) -> None:
    board = await dashboard()
    async with httpx.AsyncClient(base_url=board.url) as client:
        rebound = await client.get("/api/overview", headers={"Host": "evil.example:5555"})
        assert rebound.status_code == 403
        assert "not this machine" in rebound.json()["error"]
        assert (await client.get("/api/overview", headers={"Host": "localhost"})).is_success


def test_serving_beyond_loopback_without_auth_is_refused() -> None:
    out = subprocess.run(
        [*DASHBOARD, "--host", "0.0.0.0", "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "refusing to serve the dashboard on 0.0.0.0 without authentication" in out.stderr
    short = subprocess.run(
        [*DASHBOARD, "--token", "short"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert short.returncode != 0
    assert "--token must be at least 8 characters" in short.stderr
    nowhere = subprocess.run(
        [*DASHBOARD, "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert nowhere.returncode == 1
    assert nowhere.stderr.strip().splitlines() == [
        "Error: cannot reach NATS at nats://127.0.0.1:1 ([Errno 111] Connect call failed "
        "('127.0.0.1', 1)); is the server running? (`jsqueue server` starts one)"
    ]


async def test_the_nats_password_is_never_shown(tmp_path: Path, jsq_prefix: str) -> None:
    with NatsServer(
        store_dir=tmp_path / "store", extra_args=["--user", "a", "--pass", "pw5ecret"]
    ) as server:
        app = App("secret", url=f"nats://a:pw5ecret@127.0.0.1:{server.port}", prefix=jsq_prefix)
        board = await start_dashboard(app, tmp_path)
        try:
            async with httpx.AsyncClient(base_url=board.url, timeout=10) as client:
                overview = await client.get("/api/overview")
                page = await client.get("/")
                async with client.stream("GET", "/api/stream") as stream:
                    first = ""
                    async for line in stream.aiter_lines():
                        if line.startswith("data: "):
                            first = line
                            break
        finally:
            board.process.kill()
    assert f"127.0.0.1:{server.port}" in overview.json()["server"]["url"]
    for text in (overview.text, page.text, first, board.output()):
        assert "pw5ecret" not in text
