"""Dead letters: jobs that can never succeed, kept with why, for listing and replay.

A dead letter is one message on ``<prefix>.dlq.<queue>`` in the DLQ stream. Its body is the job's
original payload, byte for byte (so a replay sends exactly what was sent); a ``Jsq-Dead-Letter``
header holds the record as ASCII JSON: job id, task, reason, error type, message and traceback,
attempts, worker and time. Texts are cut to fit the server's max_payload and NATS's 64 KiB header
limit, never the job, unless the job alone nearly fills max_payload: then the record leads the
body and the payload is kept as far as it fits (see :func:`letter`). The ``Nats-Msg-Id`` is derived
from the job's sequence in the jobs stream, so a job copied twice (a worker died between copy and
term) is stored once.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from typing import Any

from jsqueue.config import is_job_id
from jsqueue.envelope import Envelope, decode
from jsqueue.errors import DecodeError, JsqueueError
from jsqueue.services.producer import MSG_ID, replayed, send
from jsqueue.wire import Broker, StoredMessage

HEADER = "Jsq-Dead-Letter"
#: ``body`` when the record travels in the body, before the payload (the payload was too large to
#: travel beside a record in a header).
FORMAT = "Jsq-Dead-Letter-Format"
#: NATS refuses more than 64 KiB of headers; the record stays well below.
HEADERS_MAX = 60_000
_SLACK = 512  # subject, Msg-Id and framing
#: The most a record in the body may take (its texts are cut to fit).
_BODY_RECORD_MAX = 8_000


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
    #: the job's id as sent, when it was not a legal id (``job_id`` is then ``seq-<jobs seq>``)
    given_id: str = ""
    #: the payload did not fit beside its record: only its first bytes are kept
    payload_truncated: bool = False
    payload_size: int = 0
    #: the job's sequence in the jobs stream (which message this letter is a copy of)
    jobs_seq: int = 0

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
        if self.given_id:
            doc["given_id"] = self.given_id
        if self.payload_truncated:
            doc["payload_truncated"] = True
            doc["payload_size"] = self.payload_size
        if with_payload:
            doc["traceback"] = self.traceback
            doc["payload"] = self.payload.decode("utf-8", errors="replace")
        return doc

    def envelope(self, secret_key: bytes | None) -> Envelope:
        """The job as an envelope; :class:`DecodeError` for a payload that never was one."""
        if self.payload_truncated:
            raise DecodeError(
                f"only {len(self.payload)} of the payload's {self.payload_size} bytes were kept "
                "(it did not fit beside its dead-letter record)",
                raw=self.payload,
            )
        return decode(self.payload, secret_key)


def record(
    *,
    job_id: str,
    task: str,
    queue: str,
    reason: str,
    error: dict[str, str],
    attempts: int,
    worker: str,
    jobs_seq: int,
    given_id: str = "",
) -> dict[str, Any]:
    """The record of a dead letter (texts are cut to fit when the letter is built)."""
    meta: dict[str, Any] = {
        "job_id": job_id,
        "task": task,
        "queue": queue,
        "reason": reason,
        "error_type": error.get("type", ""),
        "error_message": error.get("message", ""),
        "traceback": error.get("traceback", ""),
        "attempts": attempts,
        "worker": worker,
        "time": time.time(),
        "jobs_seq": jobs_seq,
    }
    if given_id:
        meta["given_id"] = given_id
    return meta


def letter(
    meta: dict[str, Any], payload: bytes, *, max_payload: int, in_body: bool = False
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a dead letter.

    Normally the body is the job's payload, byte for byte (a replay sends exactly what was sent),
    and the record is a header, its texts cut to fit the server's max_payload and the 64 KiB
    header limit. When the payload leaves no room for even a short record (or ``in_body``), the
    record goes first in the body, then a newline, then as much of the payload as fits: the
    letter then says the payload was truncated, with its size and SHA-256.
    """
    msg_id = {MSG_ID: f"dlq.{meta['jobs_seq']}"}
    if not in_body:
        room = min(HEADERS_MAX, max_payload - len(payload) - _SLACK)
        encoded = _fit(meta, room)
        if encoded is not None:
            return payload, {**msg_id, HEADER: encoded}
    meta = {
        **meta,
        "payload_size": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_truncated": True,
    }
    head = _fit(meta, _BODY_RECORD_MAX) or _ascii_json(_minimal(meta))
    keep = max(0, max_payload - len(head) - 1 - _SLACK)
    if keep >= len(payload):
        meta["payload_truncated"] = False
        head = _fit(meta, _BODY_RECORD_MAX) or _ascii_json(_minimal(meta))
    return head.encode() + b"\n" + payload[:keep], {**msg_id, FORMAT: "body"}


def _fit(meta: dict[str, Any], room: int) -> str | None:
    """The record as ASCII JSON in at most ``room`` characters, cutting texts; None if it
    cannot fit."""
    meta = dict(meta)
    encoded = _ascii_json(meta)
    for field, keep in (("traceback", 0), ("error_message", 200), ("task", 60), ("given_id", 40)):
        if len(encoded) <= room:
            break
        if field not in meta:
            continue
        overflow = len(encoded) - room
        text = str(meta[field])
        meta[field] = _cut(text, max(keep, len(text) - overflow - 40))
        encoded = _ascii_json(meta)
    return encoded if len(encoded) <= room else None


def _minimal(meta: dict[str, Any]) -> dict[str, Any]:
    keep = ("job_id", "queue", "reason", "attempts", "jobs_seq", "time", "payload_size")
    return {k: meta[k] for k in keep if k in meta} | {"payload_truncated": True}


def parse(message: StoredMessage) -> DeadLetter:
    payload = message.data
    try:
        if message.headers.get(FORMAT) == "body":
            head, _, payload = message.data.partition(b"\n")
            meta = json.loads(head)
        else:
            meta = json.loads(message.headers.get(HEADER, "{}"))
        if not isinstance(meta, dict):
            meta = {}
    except ValueError:
        meta = {}
    return DeadLetter(
        seq=message.seq,
        job_id=str(meta.get("job_id", f"dlq-{message.seq}")),
        task=str(meta.get("task", "?")),
        queue=str(meta.get("queue", message.subject.rsplit(".", 1)[-1])),
        reason=str(meta.get("reason", "?")),
        error_type=str(meta.get("error_type", "")),
        error_message=str(meta.get("error_message", "")),
        traceback=str(meta.get("traceback", "")),
        attempts=_int(meta.get("attempts")),
        worker=str(meta.get("worker", "")),
        time=float(meta.get("time", 0.0) or 0.0),
        payload=payload,
        given_id=str(meta.get("given_id", "")),
        payload_truncated=bool(meta.get("payload_truncated", False)),
        payload_size=_int(meta.get("payload_size")),
        jobs_seq=_int(meta.get("jobs_seq")),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def publish(broker: Broker, queue: str, payload: bytes, headers: dict[str, str]) -> None:
    """Store a dead letter (idempotent per jobs-stream sequence)."""
    await broker.publish(broker.settings.dlq_subject(queue), payload, headers)


async def list_letters(
    broker: Broker, queue: str | None = None, task: str | None = None
) -> list[DeadLetter]:
    """Every dead letter, oldest first, optionally of one queue or task."""
    s = broker.settings
    subject = s.dlq_subject(queue) if queue else s.dlq_subjects
    letters = [parse(m) for m in await broker.streams.messages(s.dlq_stream, subject)]
    return [letter for letter in letters if task is None or letter.task == task]


async def find(broker: Broker, job_id: str) -> DeadLetter | None:
    """The newest dead letter of ``job_id``: the id it lists (``seq-N`` for a job that had no
    legal id, N being its sequence in the jobs stream), or the illegal id it was sent with."""
    found = None
    for dead in await list_letters(broker):
        if job_id in (dead.job_id, dead.given_id):
            found = dead
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
    if env.args_object is not None:
        env = await _with_arguments(broker, letter, env)
    new = replayed(env, _replay_id(env.id, letter.seq))
    await send(broker, new)
    await broker.streams.delete(broker.settings.dlq_stream, letter.seq)
    return new.id


async def _with_arguments(broker: Broker, letter: DeadLetter, env: Envelope) -> Envelope:
    """The job with the large arguments it kept in the object store (they are sent again,
    under the replay's id)."""
    assert env.args_object is not None
    data = await (await broker.objects()).get(env.args_object)
    if data is None:
        ttl = broker.settings.result_ttl
        raise JsqueueError(
            f"dead letter {letter.job_id} cannot be replayed: its arguments were stored as "
            f"object {env.args_object}, which has expired (objects are kept for result_ttl, "
            f"{ttl:g}s)"
        )
    whole = decode(data, broker.settings.secret_key)
    return replace(env, args=whole.args, kwargs=whole.kwargs, args_object=None)


def _replay_id(job_id: str, seq: int) -> str:
    """``<id>.r<dlq seq>``, or a shorter id derived from both when that would be too long."""
    replay_id = f"{job_id}.r{seq}"
    if is_job_id(replay_id):
        return replay_id
    return f"r{seq}.{hashlib.sha256(job_id.encode()).hexdigest()[:24]}"


async def purge(broker: Broker, queue: str | None = None) -> int:
    """Remove dead letters (of one queue, or all); return how many."""
    s = broker.settings
    subject = s.dlq_subject(queue) if queue else s.dlq_subjects
    return await broker.streams.purge_subject(s.dlq_stream, subject)


async def count(broker: Broker) -> dict[str, int]:
    """Dead letters per queue."""
    s = broker.settings
    counts = await broker.streams.subject_counts(s.dlq_stream, s.dlq_subjects)
    return {subject.rsplit(".", 1)[-1]: n for subject, n in counts.items()}


def _ascii_json(meta: dict[str, Any]) -> str:
    return json.dumps(meta, ensure_ascii=True, separators=(",", ":"))


def _cut(text: str, length: int) -> str:
    if len(text) <= length:
        return text
    return text[: max(0, length)] + "...[truncated]"
