"""The Node example (examples/node), written from docs/protocol.md alone, against a real worker:
its producer enqueues a job and a delayed job for Python tasks, a jsqueue worker runs them, and
its reader prints their result records from the KV bucket; with the permissions the document
lists for each role, and no more."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from jsqueue import App
from jsqueue.config import BUCKETS
from jsqueue.schemas import load
from jsqueue.testing import destroy, running_worker
from jsqueue.wire.server import NatsServer

from .support import ROOT

ENVELOPE = Draft202012Validator(load("envelope"))
RESULT = Draft202012Validator(load("result"))
NODE_DIR = ROOT / "examples" / "node"
NODE = shutil.which("node")
pytestmark = [
    pytest.mark.skipif(
        NODE is None or shutil.which("npm") is None, reason="node and npm are not on PATH"
    ),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules" / "nats").is_dir(),
        reason="the example's packages are not installed: run npm ci --prefix examples/node",
    ),
]


def example_app(url: str, prefix: str) -> App:
    """A fresh copy of the example's own task module's app, on ``url`` under ``prefix``."""
    spec = importlib.util.spec_from_file_location("node_example_tasks", NODE_DIR / "tasks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    example: App = module.app
    example.configure(url=url, prefix=prefix)
    return example


@pytest.fixture
async def app(nats_server: NatsServer, jsq_prefix: str) -> AsyncIterator[App]:
    example = example_app(nats_server.url, jsq_prefix)
    try:
        yield example
    finally:
        await destroy(example)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        """The one JSON line the script printed."""
        lines = self.out.splitlines()
        said = f"exit {self.code}: {self.out}{self.err}"
        assert self.code in (0, 1), said
        assert len(lines) == 1, said
        doc: dict[str, Any] = json.loads(lines[0])
        return doc


async def node(app: App, script: str, *args: str, url: str | None = None) -> Ran:
    """``node SCRIPT ARGS`` for the app's prefix on its server (or ``url``), killed by PID if it
    outlives its time."""
    assert NODE is not None
    env = {
        **os.environ,
        "JSQUEUE_URL": url or app.settings.resolve_url(),
        "JSQ_PREFIX": app.settings.prefix,
    }
    proc = await asyncio.create_subprocess_exec(
        NODE,
        script,
        *args,
        cwd=NODE_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def check_stored(app: App, subject: str) -> None:
    """The job the Node producer stored on ``subject`` is what the envelope schema says."""
    broker = await app.broker()
    [msg] = await broker.streams.messages(app.settings.jobs_stream, subject)
    doc = json.loads(msg.data)
    ENVELOPE.validate(doc)
    assert msg.headers["Nats-Msg-Id"] == doc["id"]
    assert msg.headers["Nats-Schedule-Target"] == app.settings.queue_subject("default")
    at = r"@at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
    assert re.fullmatch(at, msg.headers["Nats-Schedule"])


async def test_a_node_producer_and_reader_with_a_python_worker(app: App) -> None:
    async with app, running_worker(app):  # the worker creates the streams and buckets
        plain = (await node(app, "producer.mjs", "add", "[2, 3]")).json()
        assert plain["subject"] == app.settings.queue_subject("default")
        greet = ("greet", '["Ada"]', "--kwargs", '{"greeting": "Hi"}', "--delay", "0.5")
        delayed = (await node(app, "producer.mjs", *greet, "--id", "greet-ada.1")).json()
        assert delayed["subject"] == app.settings.schedule_subject("default", "greet-ada.1")
        again = (await node(app, "producer.mjs", "add", "[2, 3]", "--id", plain["id"])).json()
        assert again["duplicate"] is True  # the same Nats-Msg-Id is stored once
        await node(app, "producer.mjs", "add", "[1, 1]", "--delay", "3600", "--id", "x")
        await check_stored(app, app.settings.schedule_subject("default", "x"))

        added = (await node(app, "results.mjs", plain["id"])).json()
        assert (added["state"], added["result"], added["task"]) == ("SUCCESS", 5, "add")
        greeted = (await node(app, "results.mjs", "greet-ada.1")).json()
        assert greeted["result"] == {"text": "Hi, Ada!", "eta": delayed["eta"]}
        assert greeted["started"] >= delayed["eta"]  # the schedule fired it, never early
        for shown in (added, greeted):
            RESULT.validate({k: v for k, v in shown.items() if k != "id"})
        unknown = await node(app, "results.mjs", "no-such-job", "--now")
        assert (unknown.code, unknown.json()) == (0, {"id": "no-such-job", "state": "PENDING"})
        assert await app.result(plain["id"]).get(timeout=5) == 5  # Python reads it the same


def permissions(publish: list[str], subscribe: list[str]) -> str:
    allow = ", ".join(f'"{s}"' for s in publish)
    listen = ", ".join(f'"{s}"' for s in subscribe)
    return f"permissions: {{ publish: {{ allow: [{allow}] }}, subscribe: {{ allow: [{listen}] }} }}"


async def test_the_node_example_needs_only_the_documented_permissions(
    tmp_path: Path, jsq_prefix: str
) -> None:
    """docs/protocol.md's rows: the Node producer with its two subjects and nothing else, the
    reader with the results row, the worker with the worker row."""
    p, kv = jsq_prefix, f"KV_{jsq_prefix}_results"
    producer = [f"{p}.q.>", f"{p}.sched.>"]
    reader = [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{kv}",
        f"$JS.API.CONSUMER.CREATE.{kv}",
        f"$JS.API.CONSUMER.CREATE.{kv}.>",
        f"$JS.API.CONSUMER.INFO.{kv}.>",
        f"$JS.API.CONSUMER.DELETE.{kv}.>",
        f"$JS.API.DIRECT.GET.{kv}.>",
        f"$JS.API.STREAM.MSG.GET.{kv}",
        "$JS.FC.>",
    ]
    worker = [f"{p}.>", *(f"$KV.{p}_{b}.>" for b in BUCKETS), "$JS.API.>", "$JS.FC.>"]
    worker.append(f"$JS.ACK.{p.upper()}_JOBS.>")
    inbox = ["_INBOX.>"]
    config = tmp_path / "nats.conf"
    config.write_text(
        "authorization { users = [\n"
        f"  {{ user: producer, password: p, {permissions(producer, inbox)} }}\n"
        f"  {{ user: reader, password: r, {permissions(reader, inbox)} }}\n"
        f"  {{ user: worker, password: w, {permissions(worker, inbox)} }}\n"
        "] }\n"
    )
    with NatsServer(store_dir=tmp_path / "store", config_file=config) as server:
        host = f"127.0.0.1:{server.port}"
        as_producer, as_reader = f"nats://producer:p@{host}", f"nats://reader:r@{host}"
        app = example_app(f"nats://worker:w@{host}", jsq_prefix)
        async with app, running_worker(app):
            now = await node(app, "producer.mjs", "add", "[4, 5]", url=as_producer)
            later = await node(
                app, "producer.mjs", "add", "[1, 2]", "--delay", "0.2", url=as_producer
            )
            for sent, value in ((now, 9), (later, 3)):
                shown = await node(app, "results.mjs", sent.json()["id"], url=as_reader)
                assert (shown.code, shown.json()["result"]) == (0, value)
            refused = await node(app, "results.mjs", now.json()["id"], url=as_producer)
        await app.close()
    assert refused.code != 0  # the producer's row alone cannot read results
    assert "Permissions Violation" in refused.err
