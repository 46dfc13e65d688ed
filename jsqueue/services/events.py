"""Lifecycle events on core NATS: ``<prefix>.events.<queue>.<kind>``, one JSON object each.

Workers (and producers, for "enqueued") publish them when the app has ``events=True`` (or the
worker runs with ``--events``); ``jsqueue events`` tails them. Core NATS, not JetStream: nobody
listening costs the server nothing, and events off cost the worker nothing.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

from jsqueue.envelope import Envelope
from jsqueue.hooks import Hooks, JobEvent
from jsqueue.wire import Broker


class EventPublisher(Hooks):
    """A hook that publishes every job event."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.prefix = broker.settings.events_subject

    async def on_event(self, event: JobEvent) -> None:
        subject = f"{self.prefix}.{event.queue}.{event.kind}"
        await self.broker.publish_core(subject, json.dumps(event.to_dict()).encode())


async def enqueued(broker: Broker, env: Envelope) -> None:
    """Publish the "enqueued" event of a job a producer just sent."""
    event = JobEvent("enqueued", env.id, env.task, env.queue, time.time())
    subject = f"{broker.settings.events_subject}.{env.queue}.enqueued"
    await broker.publish_core(subject, json.dumps(event.to_dict()).encode())


def subject_filter(prefix: str, queue: str | None) -> str:
    return f"{prefix}.{queue or '*'}.*"


def describe(doc: dict[str, object]) -> str:
    """One readable line for an event."""
    when = datetime.fromtimestamp(float(str(doc.get("time", 0)))).strftime("%H:%M:%S.%f")[:-3]
    parts = [when, f"{doc.get('kind', '?'):<13}", f"{doc.get('task')}[{doc.get('job_id')}]"]
    parts.append(f"queue={doc.get('queue')}")
    if doc.get("attempt"):
        parts.append(f"attempt={doc['attempt']}")
    if doc.get("duration") is not None:
        parts.append(f"took={float(str(doc['duration'])) * 1000:.1f}ms")
    if doc.get("delay") is not None:
        parts.append(f"retry_in={float(str(doc['delay'])):.1f}s")
    progress = doc.get("progress")
    if isinstance(progress, dict):
        total = progress.get("total")
        parts.append(f"progress={progress.get('done')}" + (f"/{total}" if total else ""))
    if doc.get("worker"):
        parts.append(f"worker={doc['worker']}")
    if doc.get("error"):
        parts.append(f"error={doc['error']}")
    return " ".join(parts)
