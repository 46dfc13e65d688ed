"""A traced app for worker processes: with ``JSQ_TEST_SPANS`` (a directory) set, each process
(worker, pool child) exports its finished spans to ``<dir>/<pid>.jsonl`` as they end."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from tenacity import stop_after_attempt, wait_fixed

from jsqueue import App, RetryPolicy, current_job
from jsqueue.contrib.otel import instrument

app = App("otelapp", prefix=os.environ.get("JSQ_TEST_PREFIX", "otelapp"))
PROVIDER: list[TracerProvider] = []


class FileExporter(SpanExporter):
    def __init__(self, directory: str) -> None:
        self.path = Path(directory, f"{os.getpid()}.jsonl")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as f:
            for span in spans:
                ctx, parent = span.context, span.parent
                assert ctx is not None
                row = {
                    "name": span.name,
                    "kind": span.kind.name,
                    "trace": f"{ctx.trace_id:032x}",
                    "span": f"{ctx.span_id:016x}",
                    "parent": f"{parent.span_id:016x}" if parent is not None else None,
                    "status": span.status.status_code.name,
                    "attributes": dict(span.attributes or {}),
                    "pid": os.getpid(),
                }
                f.write(json.dumps(row) + "\n")
        return SpanExportResult.SUCCESS


def configure() -> TracerProvider | None:
    directory = os.environ.get("JSQ_TEST_SPANS")
    if not directory:
        return None
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter(directory)))
    PROVIDER[:] = [provider]
    return provider


instrument(app, setup=configure)


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
async def total(values: list[int]) -> int:
    return sum(values)


@app.task(retry=RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(0.2)))
async def flaky() -> int:
    if current_job().attempt < 2:
        raise ConnectionError("first attempt fails")
    return current_job().attempt


@app.task(queue="proc")
def inner() -> int:
    """In a pool child: a span of the task's own, under the job's consumer span."""
    with PROVIDER[0].get_tracer("otelapp").start_as_current_span("inner work"):
        return os.getpid()
