"""The FastAPI example (examples/web.py) through an ASGI client, against a worker process."""

from __future__ import annotations

import asyncio
import importlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jsqueue.testing import NatsServer, Process, destroy

from .support import ROOT

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow


@pytest.fixture
async def web(
    nats_server: NatsServer, jsq_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    monkeypatch.setenv("EXAMPLE_WEB_PREFIX", jsq_prefix)
    monkeypatch.setenv("JSQUEUE_URL", nats_server.url)
    monkeypatch.syspath_prepend(str(ROOT))
    import examples.web as module

    module = importlib.reload(module)
    worker = Process.jsqueue(
        "worker",
        "-A",
        "examples.web:queue",
        env={"EXAMPLE_WEB_PREFIX": jsq_prefix, "JSQUEUE_URL": nats_server.url},
        cwd=ROOT,
        log_dir=tmp_path,
        name="web-worker",
    )
    try:
        with worker:
            yield module
            worker.signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 30) == 0, worker.output()
    finally:
        await destroy(module.queue)


async def test_a_request_enqueues_and_waits_or_returns_the_id(web: Any) -> None:
    import httpx

    api = web.api
    # the server's part: run the lifespan (the app connects there), then serve requests
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://web") as client:
            waited = await client.post("/sums", params={"wait": 30}, json={"x": 2, "y": 3})
            assert waited.status_code == 202
            assert waited.json()["value"] == 5
            job_id = (await client.post("/sums", json={"x": 40, "y": 2})).json()["id"]
            status = (await client.get(f"/jobs/{job_id}", params={"wait": 30})).json()
            assert status == {"id": job_id, "state": "SUCCESS", "value": 42}
            failed_id = (await client.post("/quotients", json={"x": 1, "y": 0})).json()["id"]
            failed = (await client.get(f"/jobs/{failed_id}", params={"wait": 30})).json()
            assert failed["state"] == "FAILURE"
            assert "division by zero" in failed["error"]
            bad = await client.get("/jobs/not an id!")
            assert bad.status_code == 400
            assert "job id" in bad.json()["detail"]
            assert (await client.post("/sums", json={"x": "two"})).status_code == 422
