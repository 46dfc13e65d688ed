"""Dead letters: jobs that can never succeed, kept with why, for listing and replay.

A dead letter is one message on ``<prefix>.dlq.<queue>`` in the DLQ stream. Its body is the job's
original payload, byte for byte (so anything that fitted the jobs stream fits here, and a replay
sends exactly what was sent); a ``Jsq-Dead-Letter`` header holds the record as ASCII JSON: job id,
task, reason, error type, message and traceback, attempts, worker and time. Texts are truncated to
fit the server's max_payload, never the job. The ``Nats-Msg-Id`` is derived from the job's sequence
in the jobs stream, so a job copied twice (a worker died between copy and term) is stored once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from jsqueue.broker import Broker
from jsqueue.envelope import Envelope, decode
from jsqueue.errors import DecodeError, JsqueueError
from jsqueue.producer import MSG_ID, send
from jsqueue.streams import StoredMessage

HEADER = "Jsq-Dead-Letter"
_HEADER_SLACK = 512  # subject, Msg-Id and framing


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered job as stored in the DLQ stream."""

    seq: int
    job_id: str
    task: str
    queue: str
    reason: str
    error_type: str
    error_message: str
    traceback: str
    attempts: int
    worker: str
    time: float
    payload: bytes

    def to_dict(self, with_payload: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq,
            "job_id": self.job_id,
            "task": self.task,
            "queue": self.queue,
            "reason": self.reason,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "worker": self.worker,
            "time": self.time,
        }
        if with_payload:
            doc["traceback"] = self.traceback
            doc["payload"] = self.payload.decode("utf-8", errors="replace")
        return doc

    def envelope(self, secret_key: bytes | None) -> Envelope:
        """The job as an envelope; :class:`DecodeError` for a payload that never was one."""
        return decode(self.payload, secret_key)


def build(
    *,
    payload: bytes,
    job_id: str,
    task: str,
    queue: str,
    reason: str,
    error_type: str,
    error_message: str,
    traceback: str,
    attempts: int,
    worker: str,
    jobs_seq: int,
    max_payload: int,
) -> dict[str, str]:
    """The headers of a dead letter whose body is ``payload``, texts cut to fit max_payload."""
    meta: dict[str, Any] = {
        "job_id": job_id,
        "task": task,
        "queue": queue,
        "reason": reason,
        "error_type": error_type,
        "error_message": error_message,
        "traceback": traceback,
        "attempts": attempts,
        "worker": worker,
        "time": time.time(),
        "jobs_seq": jobs_seq,
    }
    room = max_payload - len(payload) - _HEADER_SLACK
    encoded = _ascii_json(meta)
    for field, keep in (("traceback", 0), ("error_message", 200), ("task", 100)):
        if len(encoded) <= room:
            break
        overflow = len(encoded) - room
        text = str(meta[field])
        meta[field] = _cut(text, max(keep, len(text) - overflow - 40))
        encoded = _ascii_json(meta)
    return {MSG_ID: f"dlq.{jobs_seq}", HEADER: encoded}


def parse(message: StoredMessage) -> DeadLetter:
    try:
        meta = json.loads(message.headers.get(HEADER, "{}"))
    except ValueError:
        meta = {}
    return DeadLetter(
        seq=message.seq,
        job_id=str(meta.get("job_id", f"seq-{message.seq}")),
        task=str(meta.get("task", "?")),
        queue=str(meta.get("queue", message.subject.rsplit(".", 1)[-1])),
        reason=str(meta.get("reason", "?")),
        error_type=str(meta.get("error_type", "")),
        error_message=str(meta.get("error_message", "")),
        traceback=str(meta.get("traceback", "")),
        attempts=int(meta.get("attempts", 0)),
        worker=str(meta.get("worker", "")),
        time=float(meta.get("time", 0.0)),
        payload=message.data,
    )


async def publish(broker: Broker, queue: str, payload: bytes, headers: dict[str, str]) -> None:
    """Store a dead letter (idempotent per jobs-stream sequence)."""
    await broker.publish(broker.settings.dlq_subject(queue), payload, headers)


async def list_letters(
    broker: Broker, queue: str | None = None, task: str | None = None
) -> list[DeadLetter]:
    """Every dead letter, oldest first, optionally of one queue or task."""
    s = broker.settings
    subject = s.dlq_subject(queue) if queue else s.dlq_subjects
    letters = [parse(m) for m in await broker.messages(s.dlq_stream, subject)]
    return [letter for letter in letters if task is None or letter.task == task]


async def find(broker: Broker, job_id: str) -> DeadLetter | None:
    """The newest dead letter of ``job_id`` (or of DLQ sequence ``seq-N``)."""
    found = None
    for letter in await list_letters(broker):
        if letter.job_id == job_id or f"seq-{letter.seq}" == job_id:
            found = letter
    return found


async def replay(broker: Broker, letter: DeadLetter) -> str:
    """Send the job again under a new id that records the original's; remove the letter.

    The new id is derived from the letter, so replaying the same letter twice (a crash between
    publish and removal) stores one job.
    """
    try:
        env = letter.envelope(broker.settings.secret_key)
    except DecodeError as exc:
        raise JsqueueError(
            f"dead letter {letter.job_id} cannot be replayed: its payload is not a job ({exc})"
        ) from None
    new = Envelope(
        id=f"{env.id}.r{letter.seq}",
        task=env.task,
        args=env.args,
        kwargs=env.kwargs,
        queue=env.queue,
        created=time.time(),
        expires=None,
        parent_id=env.parent_id,
        root_id=env.root_id,
        link=env.link,
        chord=env.chord,
        headers=env.headers,
        serializer=env.serializer,
        replay_of=env.id,
    )
    await send(broker, new)
    await broker.delete_message(broker.settings.dlq_stream, letter.seq)
    return new.id


async def purge(broker: Broker, queue: str | None = None) -> int:
    """Remove dead letters (of one queue, or all); return how many."""
    s = broker.settings
    subject = s.dlq_subject(queue) if queue else s.dlq_subjects
    return await broker.purge_subject(s.dlq_stream, subject)


async def count(broker: Broker) -> dict[str, int]:
    """Dead letters per queue."""
    s = broker.settings
    counts = await broker.stream_subject_counts(s.dlq_stream, s.dlq_subjects)
    return {subject.rsplit(".", 1)[-1]: n for subject, n in counts.items()}


def _ascii_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, ensure_ascii=True, separators=(",", ":"))


def _cut(text: str, length: int) -> str:
    if len(text) <= length:
        return text
    return text[: max(0, length)] + "...[truncated]"
