"""OpenTelemetry across real worker processes: the producer span here, the consumer spans in a
worker (thread pool) and a process-pool child, joined by traceparent; retries and chain steps
in the same trace."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from jsqueue import App, chain, chord
from jsqueue.contrib.otel import instrument
from jsqueue.testing import Process, burst, destroy

from .support import ROOT

pytestmark = pytest.mark.slow
TASKS = "tests.apps.otelapp"


def worker(url: str, prefix: str, spans: Path, tmp: Path, *args: str, name: str) -> Process:
    return Process.jsqueue(
        *("worker", "-A", f"{TASKS}:app", "--url", url, *args),
        env={"JSQ_TEST_PREFIX": prefix, "JSQ_TEST_SPANS": str(spans)},
        cwd=ROOT,
        log_dir=tmp,
        name=name,
    )


def exported(spans: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in spans.glob("*.jsonl") for line in p.read_text().splitlines()]


def one(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, rows)
    return found[0]


@pytest.fixture
def memory() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


async def test_a_trace_runs_from_the_sender_through_workers_retries_and_chains(
    nats_server: Any,
    jsq_prefix: str,
    tmp_path: Path,
    memory: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = memory
    spans = tmp_path / "spans"
    spans.mkdir()
    # the sender: an app of the same name without the tasks' code, traced in memory
    client = App("otelapp", url=nats_server.url, prefix=jsq_prefix)
    instrument(client, tracer_provider=provider)
    tracer = provider.get_tracer("test")
    threads = worker(nats_server.url, jsq_prefix, spans, tmp_path, "-Q", "default", name="threads")
    pool = ("-Q", "proc", "--pool", "process", "-c", "1")
    children = worker(nats_server.url, jsq_prefix, spans, tmp_path, *pool, name="children")
    try:
        async with client:
            with threads, children:
                with tracer.start_as_current_span("request") as request:
                    add = await client.signature(f"{TASKS}.add", 1, 2).delay()
                    flaky = await client.signature(f"{TASKS}.flaky").delay()
                    steps = await chain(
                        client.signature(f"{TASKS}.add", 1, 2), client.signature(f"{TASKS}.add", 10)
                    ).delay()
                    inner = await client.signature(f"{TASKS}.inner").apply_async(queue="proc")
                    members = [client.signature(f"{TASKS}.add", i, i) for i in range(3)]
                    summed = await chord(members, client.signature(f"{TASKS}.total")).delay()
                assert await add.get(timeout=30) == 3
                assert await flaky.get(timeout=30) == 2
                assert await steps.get(timeout=30) == 13
                child_pid = await inner.get(timeout=30)
                assert await summed.get(timeout=30) == 6
                for process in (threads, children):
                    process.signal(signal.SIGTERM)
                for process in (threads, children):
                    assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        await destroy(client)
    trace_id = f"{request.get_span_context().trace_id:032x}"
    request_id = f"{request.get_span_context().span_id:016x}"
    sent = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()
            if s.name.startswith("send ")}  # fmt: skip
    rows = exported(spans)
    assert {r["trace"] for r in rows} == {trace_id}

    # one job: producer span here under the request, consumer span in the worker under it
    send_add = sent[add.id]
    assert send_add.name == f"send {TASKS}.add"
    assert send_add.kind.name == "PRODUCER"
    assert send_add.parent is not None
    assert f"{send_add.parent.span_id:016x}" == request_id
    assert send_add.attributes is not None
    assert send_add.attributes["messaging.system"] == "jsqueue"
    assert send_add.attributes["messaging.destination.name"] == "default"
    process_add = one(rows, name=f"process {TASKS}.add", pid=threads.pid, parent=_id(send_add))
    assert process_add["kind"] == "CONSUMER"
    assert process_add["attributes"]["messaging.message.id"] == add.id
    assert process_add["attributes"]["messaging.destination.name"] == "default"
    assert process_add["attributes"]["messaging.system"] == "jsqueue"
    assert process_add["attributes"]["jsqueue.attempt"] == 1

    # a retry: each attempt a consumer span under the same producer span
    attempts = [r for r in rows if r["parent"] == _id(sent[flaky.id])]
    assert sorted((r["attributes"]["jsqueue.attempt"], r["status"]) for r in attempts) == [
        (1, "ERROR"),
        (2, "UNSET"),
    ]
    assert [r["attributes"].get("error.type") for r in attempts if r["status"] == "ERROR"] == [
        "builtins.ConnectionError"
    ]
    assert process_add["attributes"]["messaging.client.id"]

    # a chain: the worker sends the second step under the first step's consumer span
    assert steps.parent is not None
    first = one(rows, name=f"process {TASKS}.add", parent=_id(sent[steps.parent.id]))
    second_send = one(rows, name=f"send {TASKS}.add", parent=first["span"])
    assert second_send["pid"] == threads.pid
    second = one(rows, name=f"process {TASKS}.add", parent=second_send["span"])
    assert second["attributes"]["messaging.message.id"] == steps.id

    # a chord: its callback is sent under the consumer span of a member (the last one)
    callback = one(rows, name=f"process {TASKS}.total")
    callback_send = one(rows, name=f"send {TASKS}.total", span=callback["parent"])
    member = one(rows, span=callback_send["parent"])
    assert member["name"] == f"process {TASKS}.add"
    assert member["attributes"]["messaging.message.id"] not in (add.id, steps.id)

    # a def task in a process-pool child: the child set tracing up (on_child_start) and the
    # task's own span nests under the consumer span
    process_inner = one(rows, name=f"process {TASKS}.inner", parent=_id(sent[inner.id]))

    assert process_inner["pid"] == children.pid
    work = one(rows, name="inner work")
    assert work["pid"] == child_pid != children.pid
    assert work["parent"] == process_inner["span"]


def _id(span: Any) -> str:
    return f"{span.context.span_id:016x}"


async def test_an_embedded_worker_traces_jobs_sent_from_inside_a_task(
    jsq_app: App, memory: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = memory
    tracing = instrument(jsq_app, tracer_provider=provider)
    assert instrument(jsq_app) is tracing  # a second call changes nothing
    assert jsq_app.middleware == [tracing]

    @jsq_app.task
    async def leaf(x: int) -> int:
        return x * 2

    @jsq_app.task
    def fan_out(n: int) -> int:  # a def task in the thread pool sends under its own span
        return len([leaf.delay_sync(i).id for i in range(n)])

    async with jsq_app:
        job = await fan_out.delay(2)
        await burst(jsq_app)
        assert await job.get(timeout=10) == 2
    finished = exporter.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for span in finished:
        by_name.setdefault(span.name.split(".")[-1], []).append(span)
    (outer,) = [s for s in by_name["fan_out"] if s.kind.name == "CONSUMER"]
    sends = [s for s in by_name["leaf"] if s.kind.name == "PRODUCER"]
    assert len(sends) == 2
    assert all(s.parent is not None and s.parent.span_id == outer.context.span_id for s in sends)
    leaves = [s for s in by_name["leaf"] if s.kind.name == "CONSUMER"]
    assert sorted(s.parent.span_id for s in leaves if s.parent) == sorted(
        s.context.span_id for s in sends
    )
    assert {s.context.trace_id for s in finished} == {outer.context.trace_id}
