"""The dashboard's JSON API without a browser: bad input gets a clear 4xx and changes nothing,
the stream sends snapshots, and the README documents every route."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jsqueue import App, JobState
from jsqueue.dashboard.api import ROUTES
from jsqueue.testing import Process, wait_state

from .support import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_bad_input_gets_a_clear_error_and_changes_nothing(
    dashapp: App, dashboard: Callable[..., Any]
) -> None:
    from tests.apps.dashapp import nap

    await nap.delay(1)
    board = await dashboard()
    async with httpx.AsyncClient(base_url=board.url, timeout=10) as client:
        csrf = re.search(r'name="jsq-csrf" content="([^"]+)"', (await client.get("/")).text)
        assert csrf is not None
        headers = {"X-Jsq-Csrf": csrf.group(1)}

        async def post(path: str, **kwargs: Any) -> httpx.Response:
            return await client.post(path, headers=headers, **kwargs)

        no_token = await client.post("/api/queues/default/purge", json={"confirm": "default"})
        assert no_token.status_code == 403
        assert "x-jsq-csrf" in no_token.json()["error"]
        unconfirmed = await post("/api/queues/default/purge", json={})
        assert unconfirmed.status_code == 400
        assert '{"confirm": "default"}' in unconfirmed.json()["error"]
        assert (
            await post("/api/queues/default/purge", json={"confirm": "other"})
        ).status_code == 400
        for body in (b"{not json", b"[1, 2]", b'"text"'):
            bad = await post("/api/queues/default/purge", content=body)
            assert bad.status_code == 400, body
            assert "JSON" in bad.json()["error"]
        bad_name = await post("/api/queues/a%20b/pause")
        assert bad_name.status_code == 400
        assert "queue" in bad_name.json()["error"]
        overview = (await client.get("/api/overview")).json()
        assert [q["ready"] for q in overview["queues"] if q["queue"] == "default"] == [1]
        assert [q["paused"] for q in overview["queues"]] == [False]

        unknown = await client.get("/api/jobs/01nosuchjob")
        assert unknown.status_code == 404
        assert "not found" in unknown.json()["error"]
        illegal = await client.get("/api/jobs/order:1")
        assert illegal.status_code == 404
        assert "not a legal job id" in illegal.json()["error"]
        assert (await post("/api/jobs/01nosuchjob/revoke")).status_code == 404
        assert (await client.get("/api/dlq/01nosuchjob")).status_code == 404
        assert (await post("/api/dlq/01nosuchjob/replay")).status_code == 404
        assert (await client.get("/api/dlq-replay/nope")).status_code == 404
        purge_all = await post("/api/dlq-purge", json={"confirm": "yes"})
        assert purge_all.status_code == 400
        assert '{"confirm": "all"}' in purge_all.json()["error"]
        done = await post("/api/queues/default/purge", json={"confirm": "default"})
        assert done.json() == {"queue": "default", "removed": 1}


async def test_a_jobs_timeline_comes_from_events_when_workers_publish_them(
    dashapp: App, dashboard: Callable[..., Any], tmp_path: Path
) -> None:
    from tests.apps.dashapp import nap

    board = await dashboard()
    with Process.jsqueue(
        "worker",
        *("-A", "tests.apps.dashapp:app", "--url", str(dashapp.settings.url), "--events"),
        env={"JSQ_TEST_PREFIX": dashapp.settings.prefix},
        cwd=ROOT,
        log_dir=tmp_path,
        name="worker",
    ):
        job = await nap.delay(0.01)
        await wait_state(job, JobState.SUCCESS, timeout=30)
        async with httpx.AsyncClient(base_url=board.url, timeout=10) as client:
            deadline = time.monotonic() + 10
            while True:  # the succeeded event may land just after the record
                view = (await client.get(f"/api/jobs/{job.id}")).json()
                kinds = [mark["kind"] for mark in view["timeline"]]
                if "succeeded" in kinds or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
    assert kinds[0] == "started"
    assert "succeeded" in kinds
    assert view["state"] == "SUCCESS"
    assert view["result"] == "0.01"
    assert any("took" in mark["detail"] for mark in view["timeline"])


async def test_odd_job_ids_never_break_the_job_page_or_api(
    dashapp: App, dashboard: Callable[..., Any]
) -> None:
    board = await dashboard()

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.text(min_size=1, max_size=300))
    def check(job_id: str) -> None:
        quoted = quote(job_id, safe="")
        page = httpx.get(f"{board.url}/jobs/{quoted}", timeout=10)
        # a path no route matches (a line break; in the API, a slash too) is a plain 404
        assert page.status_code in (200, 404), page.text[:200]
        if page.status_code == 200:  # the find form, saying why
            assert "not found" in page.text or "not a legal job id" in page.text
        api = httpx.get(f"{board.url}/api/jobs/{quoted}", timeout=10)
        assert api.status_code == 404
        if api.headers["content-type"] == "application/json":
            assert api.json()["error"]

    check()


async def test_the_stream_sends_snapshots(dashapp: App, dashboard: Callable[..., Any]) -> None:
    board = await dashboard()
    async with (
        httpx.AsyncClient(base_url=board.url, timeout=20) as client,
        client.stream("GET", "/api/stream") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        seen: list[dict[str, Any]] = []
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) == 2:
                    break
    assert seen[1]["at"] > seen[0]["at"]  # a new sample, not the same one twice
    assert {"queues", "workers", "rates", "server", "totals"} <= set(seen[1])


def test_the_readme_documents_every_api_route() -> None:
    readme = (ROOT / "README.md").read_text()
    for method, path, _, _ in ROUTES:
        assert f"| `{method} {path}` |" in readme, f"{method} {path} is not in the README"
