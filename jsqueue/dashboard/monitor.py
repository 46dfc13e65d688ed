"""What the dashboard keeps between requests: the latest snapshot, rates, events, replays.

:class:`Monitor` reads the queues (``queue_status``), the workers (their registry records) and,
every few seconds, the server (``server_status``) once a second, and wakes every
``/api/stream`` listener with the new snapshot. Rates come from the workers' own counters
(succeeded, failed, retried), differenced between samples, so the chart works with events off; a
worker that appears mid-run counts from its first sample, unless it started after the dashboard
(then from zero). Events, where workers publish them, fill a bounded per-job timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from jsqueue.app import App
from jsqueue.errors import JsqueueError
from jsqueue.services import dlq
from jsqueue.services.status import queue_status, server_status, workers

log = logging.getLogger("jsqueue.dashboard")

COUNTERS = ("succeeded", "failed", "retried")
#: samples kept for the chart (one a second: the last 15 minutes)
HISTORY = 900
#: jobs whose events are kept for their timeline, and events kept per job
EVENT_JOBS = 5_000
EVENTS_PER_JOB = 50
SERVER_EVERY = 10.0


@dataclass
class Replay:
    """A replay of many dead letters, run in the background; the page polls its progress."""

    id: str
    total: int
    done: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Monitor:
    """Samples the system for the dashboard; one per dashboard process (held by its app)."""

    def __init__(self, app: App, *, monitor_url: str | None = None, every: float = 1.0) -> None:
        self.app = app
        self.monitor_url = monitor_url
        self.every = every
        self.started = time.time()
        self.snapshot: dict[str, Any] = {"queues": [], "workers": [], "rates": [], "server": None}
        self.history: deque[dict[str, float]] = deque(maxlen=HISTORY)
        self.events: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.events_seen = False
        self.replays: dict[str, Replay] = {}
        self._counts: dict[str, tuple[float, tuple[int, ...]]] = {}
        self._rates: dict[str, tuple[float, ...]] = {}
        self._server_at = 0.0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Any = None
        self._replaying: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        broker = await self.app.broker()
        self._unsubscribe = await broker.subscribe_core(
            f"{self.app.settings.events_subject}.>", self._on_event
        )
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="jsqueue-dashboard-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._unsubscribe is not None:
            with contextlib.suppress(Exception):
                await self._unsubscribe()
        self._changed.set()  # wake the streams so they end

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.refresh()
            except Exception as exc:  # the server away, or a bug: say so, keep sampling
                if isinstance(exc, JsqueueError | OSError):
                    log.warning("cannot read the system: %s", exc)
                else:
                    log.exception("sampling the system failed")
                self.snapshot = {**self.snapshot, "error": str(exc), "at": time.time()}
                self._wake()

    async def refresh(self) -> dict[str, Any]:
        """Take a new snapshot now and wake the listeners."""
        live = await workers(self.app)
        queues = await queue_status(self.app, live)
        now = time.time()
        if self.snapshot.get("server") is None or now - self._server_at >= SERVER_EVERY:
            self.snapshot["server"] = (await server_status(self.app, self.monitor_url)).to_dict()
            self._server_at = now
        self._sample(live, now)
        dead = sum(q.dead for q in queues)
        self.snapshot = {
            "at": now,
            "queues": [q.to_dict() for q in queues],
            "workers": live,
            "rates": list(self.history),
            "server": self.snapshot["server"],
            "totals": {
                "ready": sum(q.ready for q in queues),
                "running": sum(q.running for q in queues),
                "dead": dead,
                "workers": len(live),
            },
            "events": self.events_seen,
            "error": None,
        }
        self._wake()
        return self.snapshot

    def _sample(self, live: list[dict[str, Any]], now: float) -> None:
        """One chart point: each worker's rate between its last two records (a worker writes
        its record every 2 s: differencing samples of our own would saw-tooth), summed."""
        counts: dict[str, tuple[float, tuple[int, ...]]] = {}
        rates: dict[str, tuple[float, ...]] = {}
        for record in live:
            worker_id = str(record.get("id"))
            seen = float(record.get("seen") or now)
            current = tuple(int(record.get(name) or 0) for name in COUNTERS)
            before = self._counts.get(worker_id)
            if before is None:
                fresh = float(record.get("started") or 0) >= self.started
                start = float(record.get("started") or seen)
                before = (start, (0,) * len(COUNTERS)) if fresh else (seen, current)
            if seen > before[0]:
                span = seen - before[0]
                rates[worker_id] = tuple(
                    max(0, n - was) / span for n, was in zip(current, before[1], strict=True)
                )
                counts[worker_id] = (seen, current)
            else:  # the same record as last time: its rate holds
                rates[worker_id] = self._rates.get(worker_id, (0.0,) * len(COUNTERS))
                counts[worker_id] = before
        self._counts, self._rates = counts, rates
        point = {"t": now}
        for i, name in enumerate(COUNTERS):
            point[name] = sum(r[i] for r in rates.values())
        self.history.append(point)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def updates(
        self, *, closed: asyncio.Event | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The current snapshot, then each new one as it is taken."""
        yield self.snapshot
        while self._task is not None and not self._task.done():
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=15)
            yield self.snapshot

    async def _on_event(self, subject: str, data: bytes) -> None:
        try:
            doc = json.loads(data)
        except ValueError:
            return
        job_id = doc.get("job_id") if isinstance(doc, dict) else None
        if not isinstance(job_id, str):
            return
        self.events_seen = True
        kept = self.events.setdefault(job_id, [])
        self.events.move_to_end(job_id)
        if len(kept) < EVENTS_PER_JOB:
            kept.append(doc)
        while len(self.events) > EVENT_JOBS:
            self.events.popitem(last=False)

    def replay_all(self, letters: list[dlq.DeadLetter]) -> Replay:
        """Start replaying ``letters`` in the background; one that fails is kept, and counted."""
        replay = Replay(uuid.uuid4().hex[:12], total=len(letters))
        self.replays[replay.id] = replay

        async def run() -> None:
            broker = await self.app.broker()
            for letter in letters:
                try:
                    await dlq.replay(broker, letter)
                except JsqueueError as exc:
                    replay.failed += 1
                    replay.problems.append(str(exc))
                replay.done += 1
            replay.finished = True

        task = asyncio.create_task(run(), name=f"jsqueue-dashboard-replay-{replay.id}")
        self._replaying.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._replaying.discard)
        task.add_done_callback(lambda _: self._wake())
        return replay
