"""What a pool's parent and its children say to each other over their socket, and how it is framed.

A frame is an 8-byte big-endian length and a pickle of one message, sent as a tuple: the index of
its type in ``_MESSAGES``, then its fields in order (a tuple pickles and loads several times
faster than a dataclass). Messages hold only the types below and plain values; whatever comes
from user code (a job's arguments, a return value, an exception, report data) rides inside as an
opaque *blob*: cloudpickle, or plain pickle where that gives the same (a JSON job's arguments,
a scalar). A blob that cannot be loaded fails one job or drops one report; it never breaks the
channel.
"""

from __future__ import annotations

import contextlib
import operator
import pickle
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from jsqueue.envelope import Envelope
from jsqueue.errors import SerializeError

#: The signal the parent sends when a job's soft time limit passes.
SOFT_LIMIT_SIGNAL = signal.SIGUSR1

_HEADER = struct.Struct("!Q")
_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


@dataclass(frozen=True)
class ChildJob:
    """Everything a child needs to run one job. Times are seconds; it must pickle."""

    job_id: str
    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    attempt: int = 1
    queue: str = "default"
    worker: str = ""
    headers: dict[str, str] | None = None
    parent_id: str | None = None
    root_id: str | None = None
    eta: float | None = None
    #: hard: the parent SIGKILLs the child this many seconds after handing it the job
    time_limit: float | None = None
    #: soft: SoftTimeLimitExceeded is raised inside the task after this many seconds
    soft_time_limit: float | None = None
    #: args, kwargs and headers are plain JSON values (a JSON envelope's): plain pickle carries them
    plain: bool = False

    def envelope(self) -> Envelope:
        """The job as an envelope, for ``current_job()`` where it runs."""
        return Envelope(
            id=self.job_id,
            task=self.task,
            args=self.args,
            kwargs=self.kwargs,
            queue=self.queue,
            eta=self.eta,
            parent_id=self.parent_id,
            root_id=self.root_id,
            headers=self.headers,
        )


@dataclass(frozen=True)
class ChildConfig:
    """How a child sets itself up: the parent's directory and import path, then the app."""

    app_spec: str
    cwd: str
    sys_path: tuple[str, ...]
    worker_id: str = ""
    #: the pid of the process that forks children (the forkserver); None skips the check
    expected_ppid: int | None = None
    #: report the resident memory after every job (the pool recycles by memory), not now and then
    track_memory: bool = False


@dataclass(frozen=True)
class Ready:
    """Child to parent: the app is loaded; send jobs."""

    pid: int


@dataclass(frozen=True)
class StartFailed:
    """Child to parent: the app could not be loaded; the child exits after this."""

    summary: str
    traceback: str


@dataclass(frozen=True)
class RunJob:
    """Parent to child: run the :class:`ChildJob` pickled in ``body``."""

    job_id: str
    task: str
    body: bytes


@dataclass(frozen=True)
class Stop:
    """Parent to child: exit now (the child is idle when it gets this)."""


@dataclass(frozen=True)
class Skip:
    """Parent to child: do not run ``job_id``, handed to you to run next (it was terminated
    before it started)."""

    job_id: str


@dataclass(frozen=True)
class Report:
    """Child to parent, while a job runs: ``kind`` and a blob of a dict of data."""

    job_id: str
    kind: str
    data: bytes


@dataclass(frozen=True)
class Done:
    """Child to parent: the job ended. ``value`` is a blob on success; on failure ``error`` is a
    blob of the exception (None when it cannot make the trip) and the text fields describe it.
    ``rss_mb`` is None when the child did not read its memory after this job."""

    job_id: str
    ok: bool
    value: bytes | None = None
    error: bytes | None = None
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    rss_mb: float | None = None
    duration: float = 0.0


Message = Ready | StartFailed | RunJob | Stop | Report | Done | Skip
_MESSAGES: tuple[type[Message], ...] = (Ready, StartFailed, RunJob, Stop, Report, Done, Skip)
_TAGS = {cls: tag for tag, cls in enumerate(_MESSAGES)}


def _field_getter(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """A fast ``obj -> tuple of its dataclass fields, in order``."""
    names = [f.name for f in fields(cls)]
    if len(names) >= 2:
        return operator.attrgetter(*names)
    if names:
        one = operator.attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


_FIELDS = {cls: _field_getter(cls) for cls in _MESSAGES}
_JOB_FIELDS = _field_getter(ChildJob)


def dump_blob(value: Any, *, what: str) -> bytes:
    """Cloudpickle ``value``; :class:`SerializeError` names ``what`` could not be pickled."""
    if type(value) in _SCALARS:  # the same bytes either way; plain pickle is faster
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    import cloudpickle

    try:
        blob: bytes = cloudpickle.dumps(value)
    except Exception as exc:
        raise SerializeError(f"{what} cannot be pickled: {exc!r}") from None
    return blob


def dump_job(job: ChildJob) -> bytes:
    """The blob of a job for its child: plain pickle when its arguments came as JSON (the
    values JSON makes pickle alike everywhere, and several times faster than cloudpickle),
    else :func:`dump_blob`. :func:`load_blob` loads either."""
    if job.plain:
        with contextlib.suppress(Exception):
            return pickle.dumps(_JOB_FIELDS(job), protocol=pickle.HIGHEST_PROTOCOL)
    return dump_blob(job, what=f"the arguments of job {job.job_id} ({job.task})")


def load_job(body: bytes) -> ChildJob:
    """The job in a blob made by :func:`dump_job`; ValueError if it holds no job."""
    loaded = load_blob(body)
    if isinstance(loaded, tuple):
        try:
            return ChildJob(*loaded)
        except TypeError as exc:
            raise ValueError(f"not the fields of a job: {exc}") from None
    if not isinstance(loaded, ChildJob):
        raise ValueError(f"a {type(loaded).__name__} instead of a job")
    return loaded


def load_blob(blob: bytes) -> Any:
    """Load a blob made by :func:`dump_blob` (any error of the unpickled code propagates)."""
    return pickle.loads(blob)


def frame(message: Message) -> bytes:
    """The bytes that carry ``message`` on the socket."""
    cls = type(message)
    payload = pickle.dumps((_TAGS[cls], *_FIELDS[cls](message)), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def header_size() -> int:
    return _HEADER.size


def body_size(header: bytes) -> int:
    """The payload length a frame header announces."""
    (size,) = _HEADER.unpack(header)
    return int(size)


def parse(payload: bytes) -> Message:
    """The message in a frame's payload; ValueError if it is not one of ours."""
    try:
        loaded = pickle.loads(payload)
    except Exception as exc:
        raise ValueError(f"undecodable frame: {exc!r}") from None
    if not isinstance(loaded, tuple) or not loaded or type(loaded[0]) is not int:
        raise ValueError(f"unexpected {type(loaded).__name__} on the pool channel")
    tag = loaded[0]
    if not 0 <= tag < len(_MESSAGES):
        raise ValueError(f"unknown message type {tag} on the pool channel")
    cls = _MESSAGES[tag]
    try:
        return cls(*loaded[1:])
    except TypeError as exc:
        raise ValueError(f"a {cls.__name__} with the wrong fields: {exc}") from None


def take(buffer: bytearray) -> Message | None:
    """The first whole message in ``buffer``, taken out of it; None if there is none yet
    (ValueError for one that is no message)."""
    size = frame_size(buffer)
    if size is None or len(buffer) < size:
        return None
    payload = bytes(memoryview(buffer)[_HEADER.size : size])
    del buffer[:size]
    return parse(payload)


def frame_size(buffer: bytes | bytearray) -> int | None:
    """The size, header included, of the frame that starts ``buffer``; None before its header
    is whole."""
    if len(buffer) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack_from(buffer)
    return _HEADER.size + int(size)
