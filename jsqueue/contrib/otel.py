"""OpenTelemetry tracing (``pip install jsqueue[otel]``): ``instrument(app)`` and each job gets
a ``send <task>`` producer span where it is published and a ``process <task>`` consumer span in
the worker, joined by the W3C ``traceparent`` in the job's headers.

Spans carry the messaging semantic-convention attributes (``messaging.system`` is
``"jsqueue"``, ``messaging.destination.name`` the queue, ``messaging.message.id`` the job id)
and ``jsqueue.attempt`` (the conventions have no attempt attribute of their own; they prefix
system-specific ones with the system, as Service Bus's delivery count), with ``error.type`` when
the task raised. A retry is delivered with the same headers, so each attempt is a
consumer span under the same producer span; what a worker sends after a job (the next step of
a chain, a callback, a chord's callback after its last member) is sent under that job's consumer
span, so a workflow is one trace.
``def`` tasks run under the consumer span in the pool's thread or child process: spans they
make nest under it.

Spans go to the global tracer provider unless ``tracer_provider=`` is given; ``setup=`` (a
function that configures tracing and may return a provider) runs in each worker at start and
in each process-pool child at start, where a provider must be made anew (its exporter threads
do not survive a fork).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanContext, SpanKind, Tracer, TracerProvider

from jsqueue.app import App
from jsqueue.context import JobContext
from jsqueue.envelope import Envelope
from jsqueue.middleware import Middleware

__all__ = ["Tracing", "instrument"]

SYSTEM = "jsqueue"
#: consumer spans remembered by job id, for what the worker sends after the job
REMEMBERED = 4096


class Tracing(Middleware):
    """The middleware :func:`instrument` adds; see the module's docstring."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        setup: Callable[[], TracerProvider | None] | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.setup = setup
        self._tracer: Tracer | None = None
        self._recent: dict[str, SpanContext] = {}
        self._lock = threading.Lock()

    @property
    def tracer(self) -> Tracer:
        if self._tracer is None:
            self._tracer = trace.get_tracer("jsqueue", tracer_provider=self.tracer_provider)
        return self._tracer

    def _set_up(self) -> None:
        if self.setup is not None:
            provider = self.setup()
            if provider is not None:
                self.tracer_provider = provider
                self._tracer = None

    def before_publish(self, envelope: Envelope, headers: dict[str, str]) -> None:
        parent = None
        if not trace.get_current_span().get_span_context().is_valid and envelope.parent_id:
            with self._lock:
                sent_under = self._recent.get(envelope.parent_id)
            if sent_under is not None:
                parent = trace.set_span_in_context(trace.NonRecordingSpan(sent_under))
        attributes = _attributes(envelope.queue, envelope.id, "send")
        attributes["jsqueue.task"] = envelope.task
        if envelope.eta is not None:
            attributes["jsqueue.eta"] = envelope.eta
        with self.tracer.start_as_current_span(
            f"send {envelope.task}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes
        ):
            propagate.inject(headers)

    async def around_job(self, job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        attributes = _attributes(job.queue, job.id, "process")
        attributes.update({"jsqueue.task": job.task, "jsqueue.attempt": job.attempt})
        attributes["messaging.client.id"] = job.worker
        with self.tracer.start_as_current_span(
            f"process {job.task}",
            context=propagate.extract(job.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            propagate.inject(job.headers)  # a def task's thread or child continues from here
            self._remember(job.id, span.get_span_context())
            if "chord_id" in job.extra:  # the member that completes a chord sends its callback
                self._remember(job.extra["chord_id"], span.get_span_context())
            try:
                return await call_next()
            except Exception as exc:
                span.set_attribute("error.type", f"{type(exc).__module__}.{type(exc).__qualname__}")
                raise

    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        token = otel_context.attach(propagate.extract(job.headers))
        try:
            return call_next()
        finally:
            otel_context.detach(token)

    async def on_worker_start(self, worker_id: str) -> None:
        self._set_up()

    async def on_worker_stop(self, worker_id: str) -> None:
        self._flush()

    def on_child_start(self) -> None:
        self._set_up()

    def on_child_stop(self) -> None:
        self._flush()

    def _flush(self) -> None:
        provider = self.tracer_provider or trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            flush()

    def _remember(self, job_id: str, span: SpanContext) -> None:
        with self._lock:
            self._recent[job_id] = span
            while len(self._recent) > REMEMBERED:
                del self._recent[next(iter(self._recent))]


def _attributes(queue: str, job_id: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }


def instrument(
    app: App,
    *,
    tracer_provider: TracerProvider | None = None,
    setup: Callable[[], TracerProvider | None] | None = None,
) -> Tracing:
    """Trace ``app``'s jobs (call it where the app is made, in the module ``-A`` names); a
    second call returns the first one's middleware."""
    for item in app.middleware:
        if isinstance(item, Tracing):
            return item
    tracing = Tracing(tracer_provider, setup)
    app.add_middleware(tracing)
    return tracing
