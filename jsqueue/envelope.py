"""The job envelope: a frozen, versioned record of one job, and its wire codecs.

JSON is the default and carries only data. cloudpickle is opt-in per app or task for arguments JSON
cannot carry; a pickled body travels with an HMAC-SHA256 signature made with the app's secret key,
bound to the job id and task name, and a worker verifies it before unpickling. A worker never
unpickles an unsigned or wrongly signed body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from jsqueue import fields
from jsqueue.config import Serializer, is_job_id, shorten
from jsqueue.errors import DecodeError, MalformedError, SerializeError, SignatureError

ENVELOPE_VERSION = 1

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_random_bits = random.getrandbits  # the shared instance: the one reseeded after fork
_loads = json.loads


def new_job_id() -> str:
    """A unique job id that sorts by creation time (milliseconds, then 64 random bits).

    The bits come from ``random`` (reseeded from the OS at import and in every forked child):
    ids must be unique, not unguessable, and a system call per id would cost more than the rest.
    """
    return f"{time.time_ns() // 1_000_000:012x}{_random_bits(64):016x}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One job as it travels: what to run, with what, and how. Times are Unix seconds."""

    id: str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    created: float = 0.0
    eta: float | None = None
    expires: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    #: canvas steps to run after this job, as signature dicts (see jsqueue.canvas)
    link: tuple[dict[str, Any], ...] = ()
    #: a chord this job is a member of: {"id", "index", "size"}
    chord: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    serializer: Serializer = "json"
    #: the job id this job replays from the dead-letter stream
    replay_of: str | None = None
    #: where the worker says the job has an outcome (the sending process's subject)
    notify: str | None = None
    #: the object holding the whole envelope when its arguments were too large for a message
    args_object: str | None = None
    #: error callbacks (task nodes) to send if the job fails for good
    on_error: tuple[dict[str, Any], ...] = ()
    #: 0 (low) to 3 (urgent), higher runs first; None: normal (1). It picks the subject.
    priority: int | None = None
    #: the unique key this job holds (released by the worker when the job reaches a final state)
    unique_key: str | None = None


_OPTIONAL = (
    "eta",
    "expires",
    "parent_id",
    "root_id",
    "chord",
    "headers",
    "replay_of",
    "notify",
    "args_object",
    "priority",
    "unique_key",
)


def encode(env: Envelope, secret_key: bytes | None = None) -> bytes:
    """Serialise an envelope to bytes; raise :class:`SerializeError` if its arguments cannot be."""
    doc: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "id": env.id,
        "task": env.task,
        "queue": env.queue,
        "created": env.created,
    }
    for name in _OPTIONAL:
        value = getattr(env, name)
        if value is not None:
            doc[name] = value
    if env.link:
        doc["link"] = list(env.link)
    if env.on_error:
        doc["on_error"] = list(env.on_error)
    if env.serializer == "json":
        doc["args"] = list(env.args)
        doc["kwargs"] = env.kwargs
    else:
        doc.update(
            pickle_value(
                {"args": list(env.args), "kwargs": env.kwargs},
                secret_key,
                bind=f"{env.id}\0{env.task}",
                what=f"the arguments of {env.task}",
            )
        )
    return to_json(doc, what=f"the arguments of {env.task}")


def to_json(doc: Any, *, what: str) -> bytes:
    """Dump a document as compact JSON bytes; :class:`SerializeError` names ``what`` failed."""
    try:
        return _dumps(doc).encode()
    except RecursionError:
        raise SerializeError(f"{what} nests too deeply to be sent as JSON") from None
    except (TypeError, ValueError) as exc:
        raise SerializeError(
            f"{what} cannot be sent as JSON ({exc}); use JSON types (str, int, float, bool, "
            "None, list, dict) or serializer='cloudpickle'"
        ) from None


def decode(data: bytes, secret_key: bytes | None = None) -> Envelope:
    """Parse bytes into an envelope, or raise :class:`DecodeError` that keeps the bytes.

    Every field is checked (see :mod:`jsqueue.fields`): a wrong one raises
    :class:`MalformedError` naming it, so nothing malformed ever reaches a task, a KV key or a
    subject. Unknown fields are ignored (a newer producer may add some).
    """
    doc = _document(data)
    try:
        job_id = fields.job_id(doc.get("id"))
        task = fields.task_name(doc.get("task"))
        if "pickle" in doc:
            body = unpickle_value(doc, secret_key, bind=f"{job_id}\0{task}", raw=data)
            if not isinstance(body, dict):
                raise fields.FieldError("the signed pickle does not hold args and kwargs")
            args, kwargs = body.get("args", []), body.get("kwargs", {})
        else:
            args, kwargs = doc.get("args", []), doc.get("kwargs", {})
        get = doc.get
        # optional fields are checked only when present (most envelopes carry few of them)
        eta, expires, parent, root = get("eta"), get("expires"), get("parent_id"), get("root_id")
        link, chord, hdrs = get("link"), get("chord"), get("headers")
        replay, notify, args_object = get("replay_of"), get("notify"), get("args_object")
        on_error, priority, unique = get("on_error"), get("priority"), get("unique_key")
        queue = get("queue", "default")
        return Envelope(
            id=job_id,
            task=task,
            args=fields.args(list(args) if isinstance(args, tuple) else args),
            kwargs=fields.kwargs(kwargs),
            queue=queue if queue == "default" else fields.queue(queue),
            created=fields.number(get("created", 0.0), "created"),
            eta=None if eta is None else fields.number(eta, "eta"),
            expires=None if expires is None else fields.number(expires, "expires"),
            parent_id=None if parent is None else fields.job_id(parent, "parent_id"),
            root_id=None if root is None else fields.job_id(root, "root_id"),
            link=() if link is None else fields.link(link),
            chord=None if chord is None else fields.chord(chord),
            headers=None if hdrs is None else fields.headers(hdrs),
            serializer="cloudpickle" if "pickle" in doc else "json",
            replay_of=None if replay is None else fields.job_id(replay, "replay_of"),
            notify=None if notify is None else fields.notify(notify),
            args_object=None if args_object is None else fields.args_object(args_object, job_id),
            on_error=() if on_error is None else fields.on_error(on_error),
            priority=None if priority is None else fields.priority(priority),
            unique_key=None if unique is None else fields.job_id(unique, "unique_key"),
        )
    except fields.FieldError as exc:
        raise MalformedError(f"envelope is malformed: {exc}", raw=data) from None


def _document(data: bytes) -> dict[str, Any]:
    """The JSON object of a payload, of a version this worker reads."""
    try:
        doc = _loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"payload is not JSON: {exc}", raw=data) from None
    except RecursionError:
        raise DecodeError("payload nests JSON too deeply to be read", raw=data) from None
    if not isinstance(doc, dict):
        raise DecodeError("payload is JSON but not an envelope object", raw=data)
    version = doc.get("v")
    if type(version) is not int or version != ENVELOPE_VERSION:  # not True, not 1.0
        raise DecodeError(
            f"envelope version {shorten(version)} is not understood by this worker "
            f"(it reads version {ENVELOPE_VERSION}); upgrade the worker or the producer",
            raw=data,
        )
    return doc


def peek(data: bytes) -> tuple[str | None, str | None]:
    """Best effort (job id, task) of a payload that did not decode, for dead-letter records.

    Either is None unless it is a legal job id or task name.
    """
    try:
        doc = _loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    job_id, task = doc.get("id"), doc.get("task")
    try:
        task = fields.task_name(task)
    except fields.FieldError:
        task = None
    return (job_id if is_job_id(job_id) else None, task)


def sent_id(data: bytes) -> Any:
    """The ``id`` field of a payload as sent, whatever it is (None if there is none)."""
    try:
        doc = _loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc.get("id") if isinstance(doc, dict) else None


def pickle_value(value: Any, secret_key: bytes | None, *, bind: str, what: str) -> dict[str, str]:
    """Pickle ``value`` into ``{"pickle": base64, "sig": hmac}`` fields of a JSON document.

    ``bind`` is mixed into the signature so a signed body cannot be moved to another job.
    """
    if not secret_key:
        raise SerializeError("serializer='cloudpickle' needs the app's secret_key")
    import cloudpickle

    try:
        pickled = cloudpickle.dumps(value)
    except Exception as exc:
        raise SerializeError(f"{what} cannot be pickled: {exc!r}") from None
    return {"pickle": base64.b64encode(pickled).decode(), "sig": _sign(secret_key, bind, pickled)}


def unpickle_value(doc: dict[str, Any], secret_key: bytes | None, *, bind: str, raw: bytes) -> Any:
    """Load the value :func:`pickle_value` stored in ``doc``, verifying its signature first."""
    signature = doc.get("sig")
    if not isinstance(signature, str) or not signature:
        raise SignatureError("pickled payload is unsigned; refused without unpickling", raw=raw)
    if not secret_key:
        raise SignatureError(
            "pickled payload received but this app has no secret_key to verify it; refused "
            "without unpickling",
            raw=raw,
        )
    try:
        pickled = base64.b64decode(doc["pickle"], validate=True)
    except (ValueError, TypeError):
        raise DecodeError("pickled payload is not valid base64", raw=raw) from None
    if not hmac.compare_digest(signature, _sign(secret_key, bind, pickled)):
        raise SignatureError(
            "pickled payload has a wrong signature (another secret_key, or tampered); refused "
            "without unpickling",
            raw=raw,
        )
    import cloudpickle

    try:
        return cloudpickle.loads(pickled)
    except Exception as exc:
        raise DecodeError(f"signed pickle could not be loaded: {exc!r}", raw=raw) from None


def _sign(secret_key: bytes, bind: str, body: bytes) -> str:
    mac = hmac.new(secret_key, bind.encode(), hashlib.sha256)
    mac.update(b"\0")
    mac.update(body)
    return mac.hexdigest()
