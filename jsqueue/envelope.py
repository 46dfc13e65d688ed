"""The job envelope: a frozen, versioned record of one job, and its wire codecs.

JSON is the default and carries only data. cloudpickle is opt-in per app or task for arguments JSON
cannot carry; a pickled body travels with an HMAC-SHA256 signature made with the app's secret key,
bound to the job id and task name, and a worker verifies it before unpickling. A worker never
unpickles an unsigned or wrongly signed body.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from jsqueue import fields
from jsqueue.compact import read_object
from jsqueue.compact import to_json as to_json
from jsqueue.config import JOB_ID_MAX, Serializer, is_job_id, remembering, shorten
from jsqueue.errors import DecodeError, MalformedError
from jsqueue.pickled import pickle_value as pickle_value
from jsqueue.pickled import unpickle_value as unpickle_value

ENVELOPE_VERSION = 1

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


class _Draft:
    """An :class:`Envelope` being built: the same slots, but settable. A frozen dataclass sets
    each field through ``object.__setattr__``, about 2,000 instructions a field; a draft's
    fields are set as plain slots, then it becomes the Envelope it was drafted as (the same
    layout: Python checks that and refuses a class that differs)."""

    __slots__ = Envelope.__slots__


def assemble(
    job_id: str,
    task: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: str,
    created: float,
    eta: float | None = None,
    expires: float | None = None,
    parent_id: str | None = None,
    root_id: str | None = None,
    link: tuple[dict[str, Any], ...] = (),
    chord: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    serializer: Serializer = "json",
    replay_of: str | None = None,
    notify: str | None = None,
    args_object: str | None = None,
    on_error: tuple[dict[str, Any], ...] = (),
    priority: int | None = None,
    unique_key: str | None = None,
) -> Envelope:
    """``Envelope(...)`` with these fields (positional, in their order), for a tenth of the
    instructions: for the paths that build one per job."""
    env: Any = _Draft()
    env.id, env.task, env.args, env.kwargs, env.queue = job_id, task, args, kwargs, queue
    env.created, env.eta, env.expires, env.parent_id = created, eta, expires, parent_id
    env.root_id, env.link, env.chord, env.headers = root_id, link, chord, headers
    env.serializer, env.replay_of, env.notify = serializer, replay_of, notify
    env.args_object, env.on_error, env.priority = args_object, on_error, priority
    env.unique_key = unique_key
    env.__class__ = Envelope
    return env  # type: ignore[no-any-return]


def encode(env: Envelope, secret_key: bytes | None = None) -> bytes:
    """Serialise an envelope to bytes; raise :class:`SerializeError` if its arguments cannot be."""
    doc: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "id": env.id,
        "task": env.task,
        "queue": env.queue,
        "created": env.created,
    }
    # the optional fields that are set (written out: a getattr loop over their names costs more)
    if env.eta is not None:
        doc["eta"] = env.eta
    if env.expires is not None:
        doc["expires"] = env.expires
    if env.parent_id is not None:
        doc["parent_id"] = env.parent_id
    if env.root_id is not None:
        doc["root_id"] = env.root_id
    if env.chord is not None:
        doc["chord"] = env.chord
    if env.headers is not None:
        doc["headers"] = env.headers
    if env.replay_of is not None:
        doc["replay_of"] = env.replay_of
    if env.notify is not None:
        doc["notify"] = env.notify
    if env.args_object is not None:
        doc["args_object"] = env.args_object
    if env.priority is not None:
        doc["priority"] = env.priority
    if env.unique_key is not None:
        doc["unique_key"] = env.unique_key
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


def decode(data: bytes, secret_key: bytes | None = None) -> Envelope:
    """Parse bytes into an envelope, or raise :class:`DecodeError` that keeps the bytes.

    Every field is checked (see :mod:`jsqueue.fields`): a wrong one raises
    :class:`MalformedError` naming it, so nothing malformed ever reaches a task, a KV key or a
    subject. Unknown fields are ignored (a newer producer may add some).
    """
    doc = _document(data)
    get = doc.get
    try:
        # The common case of each field is accepted here, as strictly as jsqueue.fields does;
        # anything else goes to its check there, which accepts it or says why not.
        job_id = get("id")
        if type(job_id) is not str or len(job_id) > JOB_ID_MAX or not _plain_id(job_id):
            job_id = fields.job_id(job_id)
        task = get("task")
        if (
            type(task) is not str
            or not 0 < len(task) <= fields.TASK_NAME_MAX
            or not task.isprintable()
        ):
            task = fields.task_name(task)
        pickled = "pickle" in doc
        if pickled:
            body = unpickle_value(doc, secret_key, bind=f"{job_id}\0{task}", raw=data)
            if not isinstance(body, dict):
                raise fields.FieldError("the signed pickle does not hold args and kwargs")
            args, kwargs = body.get("args", []), body.get("kwargs", {})
        else:
            args, kwargs = get("args", []), get("kwargs", {})
        # optional fields are checked only when present (most envelopes carry few of them)
        eta, expires, parent, root = get("eta"), get("expires"), get("parent_id"), get("root_id")
        link, chord, hdrs = get("link"), get("chord"), get("headers")
        replay, notify, args_object = get("replay_of"), get("notify"), get("args_object")
        on_error, priority, unique = get("on_error"), get("priority"), get("unique_key")
        queue = get("queue", "default")
        # checked in the order of the fields (the first wrong one is named)
        if type(args) is list:
            args = tuple(args)
        else:
            args = fields.args(list(args) if isinstance(args, tuple) else args)
        if type(kwargs) is not dict:
            kwargs = fields.kwargs(kwargs)
        if queue != "default":
            queue = fields.queue(queue)
        created = get("created", 0.0)
        if type(created) is not float or created - created != 0.0:  # not inf, not nan
            created = fields.number(created, "created")
        return assemble(
            job_id,
            task,
            args,
            kwargs,
            queue,
            created,
            None if eta is None else fields.number(eta, "eta"),
            None if expires is None else fields.number(expires, "expires"),
            None if parent is None else fields.job_id(parent, "parent_id"),
            None if root is None else fields.job_id(root, "root_id"),
            () if link is None else fields.link(link),
            None if chord is None else fields.chord(chord),
            None if hdrs is None else fields.headers(hdrs),
            "cloudpickle" if pickled else "json",
            None if replay is None else fields.job_id(replay, "replay_of"),
            None if notify is None else _notify(notify),
            None if args_object is None else fields.args_object(args_object, job_id),
            () if on_error is None else fields.on_error(on_error),
            None if priority is None else fields.priority(priority),
            None if unique is None else fields.job_id(unique, "unique_key"),
        )
    except fields.FieldError as exc:
        raise MalformedError(f"envelope is malformed: {exc}", raw=data) from None


def _plain_id(value: str) -> bool:
    """Letters and digits only, ASCII, at least one: a job id by the rule (as new ids are)."""
    return value.isalnum() and value.isascii()


#: fields.notify for the subjects of the few processes that send jobs, job after job
_notify = remembering(fields.notify)


def _document(data: bytes) -> dict[str, Any]:
    """The JSON object of a payload, of a version this worker reads.

    The usual payload (UTF-8 text of one object, nothing around it) goes straight to the
    scanner ``json.loads`` ends in; anything else to ``json.loads``, which reads it (or says
    why not) as before. The result is the same: a payload that starts ``{`` and parses as
    UTF-8 is one that ``json.loads`` decodes as UTF-8 too (UTF-16 fails at its second byte).
    """
    doc = read_object(data)
    if doc is None:
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
