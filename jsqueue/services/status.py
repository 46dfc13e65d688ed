"""What the system holds and does, in the words of a task queue: queues, jobs, workers.

``jsqueue status``, ``jsqueue inspect`` and ``jsqueue purge`` print what these functions return.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

from jsqueue.config import JOB_ID_RULE, PRIORITY_NORMAL, is_job_id, shorten
from jsqueue.envelope import Envelope, decode, peek
from jsqueue.errors import DecodeError, JsqueueError
from jsqueue.services import dlq
from jsqueue.services.deps import Deps
from jsqueue.services.handles import AsyncResult
from jsqueue.services.queues import paused_queues
from jsqueue.services.registry import REGISTRY_TTL, WorkerRegistry
from jsqueue.wire import Broker

#: How many ready jobs ``inspect job`` reads through to find one by id.
READY_SCAN_LIMIT = 10_000


@dataclass
class QueueStatus:
    """One queue, all priority levels together. ``retrying`` counts jobs waiting out a retry:
    a short one unacked on the server (``unacked`` = ``running`` + ``held`` + those), a long
    one on a server schedule. ``held`` counts jobs a worker holds waiting for a free slot (its
    prefetch) or for a limit; they count as ``ready`` too. ``scheduled`` counts delayed jobs;
    ``paused`` says whether workers hold off its jobs (see
    :func:`jsqueue.services.queues.pause_queue`)."""

    queue: str
    ready: int = 0
    running: int = 0
    held: int = 0
    retrying: int = 0
    unacked: int = 0
    scheduled: int = 0
    dead: int = 0
    workers: int = 0
    oldest_ready_age: float | None = None
    paused: bool = False
    #: ready jobs per priority level that has any ("0" to "3")
    ready_by_priority: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ServerStatus:
    """The NATS side. Cluster size and fsync policy need the server's monitoring URL."""

    url: str
    version: str
    replicas: int
    cluster_size: int | None = None
    sync: str = "unknown"
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def workers(app: Deps) -> list[dict[str, Any]]:
    """The registry record of every live worker."""
    broker = await app.broker()
    return await WorkerRegistry(await broker.kv("workers", ttl=REGISTRY_TTL)).workers()


async def queue_status(app: Deps, live: list[dict[str, Any]] | None = None) -> list[QueueStatus]:
    """Every queue that has jobs, delayed jobs, dead letters, a consumer or a worker."""
    broker = await app.broker()
    s = app.settings
    queues: dict[str, QueueStatus] = {}

    def of(name: str) -> QueueStatus:
        return queues.setdefault(name, QueueStatus(name))

    moved: dict[str, int] = {}
    #: (queue, level) -> jobs ready: stored on the subject, or (with a consumer) not delivered
    ready: dict[tuple[str, str], int] = {}
    for subject, count in (
        await broker.streams.subject_counts(s.jobs_stream, f"{s.prefix}.>")
    ).items():
        parts = subject.split(".")
        if parts[1] == "q":
            of(parts[2])
            ready[(parts[2], _level(parts))] = count
        elif parts[1] == "sched":
            of(parts[2]).scheduled += count
        elif parts[1] == "retry":
            moved[parts[2]] = moved.get(parts[2], 0) + count
    for info in await broker.streams.consumers():
        parts = info.filter_subject.split(".")
        if len(parts) >= 3 and parts[0] == s.prefix and parts[1] == "q":
            of(parts[2]).unacked += info.ack_pending
            ready[(parts[2], _level(parts))] = info.pending  # stored minus delivered
    for (name, level), count in ready.items():
        of(name).ready += count
        if count:
            of(name).ready_by_priority[level] = count
    for name in await paused_queues(app):
        of(name).paused = True
    for subject, count in (
        await broker.streams.subject_counts(s.dlq_stream, s.dlq_subjects)
    ).items():
        of(subject.rsplit(".", 1)[1]).dead += count
    for record in live if live is not None else await workers(app):
        for name in record.get("queues", []):
            of(name).workers += 1
        for job in record.get("running", []):
            of(job.get("queue", "?")).running += 1
        held = record.get("held")
        for name, count in held.items() if isinstance(held, dict) else ():
            if isinstance(count, int) and count > 0:
                of(str(name)).held += count
    now = time.time()
    for queue in queues.values():
        queue.ready += queue.held
        waiting = max(0, queue.unacked - queue.running - queue.held)
        queue.retrying = waiting + moved.get(queue.queue, 0)
        if queue.ready:
            oldest = await broker.streams.oldest_ready(queue.queue)
            queue.oldest_ready_age = None if oldest is None else max(0.0, now - oldest)
    return sorted(queues.values(), key=lambda q: q.queue)


def _level(subject_parts: list[str]) -> str:
    """The priority level of a queue subject (``<prefix>.q.<queue>[.p<level>]``)."""
    return subject_parts[3][1:] if len(subject_parts) > 3 else str(PRIORITY_NORMAL)


async def server_status(app: Deps, monitor_url: str | None = None) -> ServerStatus:
    """Version and replicas from the connection; cluster size and fsync from monitoring."""
    broker = await app.broker()
    info = await broker.streams.state(app.settings.jobs_stream)
    status = ServerStatus(broker.url, broker.server_version, info.replicas)
    if monitor_url:
        varz = await _monitor(monitor_url, "varz")
        jsz = await _monitor(monitor_url, "jsz")
        meta = jsz.get("meta_cluster") or {}
        status.cluster_size = int(meta.get("cluster_size") or 1)
        config = (varz.get("jetstream") or {}).get("config") or {}
        if config.get("sync_always"):
            status.sync = "always"
        else:
            seconds = int(config.get("sync_interval", 120_000_000_000)) / 1e9
            status.sync = f"every {seconds:g}s"
        if status.cluster_size > 1 and status.sync != "always":
            status.warning = (
                "clustered JetStream without sync_interval: always can lose acknowledged jobs "
                "when nodes fail together; set it in the server's jetstream block"
            )
    return status


async def _monitor(base: str, endpoint: str) -> dict[str, Any]:
    url = f"{base.rstrip('/')}/{endpoint}"

    def fetch() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=5) as response:
            data: dict[str, Any] = json.load(response)
            return data

    try:
        return await asyncio.to_thread(fetch)
    except (OSError, ValueError) as exc:
        raise JsqueueError(f"cannot read the NATS monitoring endpoint {url}: {exc}") from None


async def queues_known(app: Deps) -> list[str]:
    return [q.queue for q in await queue_status(app)]


async def purge_queue(app: Deps, queue: str, scheduled: bool = False) -> int:
    """Remove the jobs waiting in ``queue`` (and its delayed jobs with ``scheduled``)."""
    known = await queues_known(app)
    if queue not in known:
        listed = ", ".join(known) or "none"
        raise JsqueueError(f"no queue named {queue!r} (queues: {listed})")
    broker = await app.broker()
    s = app.settings
    removed = await broker.streams.purge_subject(s.jobs_stream, s.queue_subject(queue))
    removed += await broker.streams.purge_subject(s.jobs_stream, f"{s.queue_subject(queue)}.*")
    if scheduled:
        for subject in (s.schedule_subject(queue, ">"), s.retry_subject(queue, ">")):
            removed += await broker.streams.purge_subject(s.jobs_stream, subject)
    return removed


async def locate_job(app: Deps, job_id: str) -> dict[str, Any]:
    """Where a job is and what is known of it; :class:`JsqueueError` if it is nowhere."""
    broker = await app.broker()
    found: dict[str, Any] = {"id": job_id}
    legal = is_job_id(job_id)
    if not legal:  # no record or schedule can have it; a dead letter may (as sent)
        letter = await dlq.find(broker, job_id)
        if letter is None:
            raise JsqueueError(
                f"job id {shorten(job_id)} is not a legal job id ({JOB_ID_RULE}); no dead "
                "letter was sent with it either"
            )
        found.update(where="dead-lettered", state="DEAD", dead_letter=letter.to_dict(False))
        return found
    outcome = await (await app.result_backend()).read(job_id)
    if outcome is not None:
        found.update({k: v for k, v in outcome.record.items() if k not in ("pickle", "sig")})
    registered = await workers(app)
    for record in registered:
        for job in record.get("running", []):
            if job.get("id") == job_id:
                found["where"] = "running"
                found["running_on"] = record["id"]
                found["running_since"] = job.get("started")
                found["running_in"] = job.get("where") or "?"
    alive = {record.get("id") for record in registered}
    if "where" not in found and found.get("state") == "STARTED" and found.get("worker") in alive:
        # its worker's registry record (written every 2 s) does not list it yet, but the worker
        # is there, and the STARTED record a running job writes says it runs it
        found["where"] = "running"
        found["running_on"] = found.get("worker", "?")
        found["running_since"] = found.get("at")
        found["running_in"] = "?"  # the registry record says where; this one does not
    delayed = await _delayed(broker, app, job_id)
    if delayed is not None:
        found.setdefault("where", "delayed")
        found["delayed_until"] = delayed
    if await _waiting_retry(broker, app, job_id):
        found.setdefault("where", "retrying")
        found["retries_at"] = found.get("retry_at")
    letter = await dlq.find(broker, job_id)
    if letter is not None:
        found["where"] = "dead-lettered"
        found["dead_letter"] = letter.to_dict(with_payload=False)
    if "where" not in found and await _ready(broker, app, job_id):
        found["where"] = "ready"
    if "where" not in found and "state" in found:
        found["where"] = (
            "done" if found["state"] in ("SUCCESS", "FAILURE") else found["state"].lower()
        )
    if "where" not in found:
        raise JsqueueError(
            f"job {job_id} not found: no result recorded, and it is not ready (in the "
            f"{READY_SCAN_LIMIT:,} oldest ready jobs), delayed, running or dead-lettered"
        )
    found.setdefault("state", "PENDING")
    return found


async def _delayed(broker: Broker, app: Deps, job_id: str) -> float | None:
    s = app.settings
    subject = s.schedule_subject("*", job_id)
    message = await broker.streams.get(s.jobs_stream, 1, subject=subject, next_=True)
    if message is None:
        return None
    try:
        return decode(message.data, s.secret_key).eta
    except DecodeError:
        return None


async def _waiting_retry(broker: Broker, app: Deps, job_id: str) -> bool:
    """Whether ``job_id`` waits out a long retry on a server schedule."""
    s = app.settings
    subject = s.retry_subject("*", job_id)
    return await broker.streams.get(s.jobs_stream, 1, subject=subject, next_=True) is not None


async def _ready(broker: Broker, app: Deps, job_id: str) -> bool:
    s = app.settings
    seq = 1
    for _ in range(READY_SCAN_LIMIT):
        message = await broker.streams.get(s.jobs_stream, seq, subject=s.queue_subjects, next_=True)
        if message is None:
            return False
        if peek(message.data)[0] == job_id:
            return True
        seq = message.seq + 1
    return False


async def revoke_job(app: Deps, job_id: str, *, terminate: bool = False) -> str:
    """Revoke a job and say in one line what that did; :class:`JsqueueError` if no such job is
    known or it already finished."""
    found = await locate_job(app, job_id)  # raises for an unknown or illegal id
    state = found.get("state", "PENDING")
    running = found.get("where") == "running"
    if state in ("SUCCESS", "FAILURE", "DEAD", "EXPIRED") or (
        state == "REVOKED" and not (running and terminate)
    ):
        raise JsqueueError(f"job {job_id} already finished ({state}); nothing changed")
    await AsyncResult(app, job_id).revoke(terminate=terminate)
    if not running:
        return f"job {job_id} revoked: it was {found.get('where', 'queued')}, and will never run"
    worker, where = found["running_on"], found["running_in"]
    if not terminate:
        return (
            f"job {job_id} revoked; it is running on {worker} and runs to its end (pass "
            "--terminate to stop it); its outcome will not be recorded"
        )
    if where == "thread":
        return (
            f"job {job_id} revoked; it runs in a thread of {worker}, which cannot be stopped: it "
            "runs to its end, and its outcome will not be recorded"
        )
    how = {
        "process": "its pool child is killed",
        "async": "its coroutine is cancelled",
    }.get(where, "where its pool allows")
    return f"job {job_id} revoked and terminated: {worker} stops it now ({how})"


async def job_envelope(app: Deps, job_id: str) -> Envelope | None:
    """The job as sent (its task, arguments, eta), where the system still holds it: dead-lettered,
    delayed, waiting out a long retry, or ready; None once it has run (or for an unknown id)."""
    broker = await app.broker()
    s = app.settings
    letter = await dlq.find(broker, job_id)
    if letter is not None:
        try:
            return letter.envelope(s.secret_key)
        except DecodeError:
            return None
    if not is_job_id(job_id):
        return None
    for subject in (s.schedule_subject("*", job_id), s.retry_subject("*", job_id)):
        message = await broker.streams.get(s.jobs_stream, 1, subject=subject, next_=True)
        if message is not None:
            return _decoded(message.data, s.secret_key)
    seq = 1
    for _ in range(READY_SCAN_LIMIT):
        message = await broker.streams.get(s.jobs_stream, seq, subject=s.queue_subjects, next_=True)
        if message is None:
            return None
        if peek(message.data)[0] == job_id:
            return _decoded(message.data, s.secret_key)
        seq = message.seq + 1
    return None


def _decoded(data: bytes, secret_key: bytes | None) -> Envelope | None:
    try:
        return decode(data, secret_key)
    except DecodeError:
        return None
