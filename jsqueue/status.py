"""What the system holds, per queue, in the words of a task queue: ready, running, scheduled,
dead-lettered. ``jsqueue status`` prints it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsqueue.app import App


@dataclass
class QueueStatus:
    """One queue. ``unacked`` counts jobs delivered to workers and not yet settled: running,
    or waiting out a retry delay."""

    queue: str
    ready: int = 0
    unacked: int = 0
    scheduled: int = 0
    dead: int = 0
    oldest_ready_age: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def queue_status(app: App) -> list[QueueStatus]:
    """Every queue that has jobs, delayed jobs, dead letters or a consumer."""
    broker = await app.broker()
    s = app.settings
    queues: dict[str, QueueStatus] = {}

    def of(name: str) -> QueueStatus:
        return queues.setdefault(name, QueueStatus(name))

    stored = await broker.stream_subject_counts(s.jobs_stream, f"{s.prefix}.>")
    for subject, count in stored.items():
        parts = subject.split(".")
        if parts[1] == "q":
            of(parts[2]).ready += count
        elif parts[1] == "sched":
            of(parts[2]).scheduled += count
    for info in await broker.consumers():
        name = info.config.filter_subject or ""
        if not name.startswith(f"{s.prefix}.q."):
            continue
        queue = of(name.split(".", 2)[2])
        queue.unacked = int(info.num_ack_pending or 0)
        queue.ready = int(info.num_pending or 0)  # stored minus delivered
    dead = await broker.stream_subject_counts(s.dlq_stream, s.dlq_subjects)
    for subject, count in dead.items():
        of(subject.rsplit(".", 1)[1]).dead += count
    now = time.time()
    for queue in queues.values():
        if queue.ready:
            oldest = await broker.oldest_ready(queue.queue)
            queue.oldest_ready_age = None if oldest is None else max(0.0, now - oldest)
    return sorted(queues.values(), key=lambda q: q.queue)
