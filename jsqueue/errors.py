"""The jsqueue exception tree, and the two exceptions a task raises to steer its own fate.

Every error jsqueue raises derives from :class:`JsqueueError`; nats-py errors are translated at the
wire boundary, so callers never need to import nats to handle a failure.
"""

from __future__ import annotations


class JsqueueError(Exception):
    """Base of every error raised by jsqueue."""


class ConfigError(JsqueueError, ValueError):
    """A setting, a name or an argument is invalid; the message names it and says what to do."""


class ConnectError(JsqueueError):
    """The NATS server cannot be reached, refused our credentials, or is not suitable."""


class ProvisionError(JsqueueError):
    """A stream, consumer or bucket could not be created, or exists with incompatible settings."""


class PublishError(JsqueueError):
    """The server did not confirm a publish; the job may be stored or not (retry with its id)."""


# What a NATS operation's failure means to its caller. The wire package translates every nats-py
# error into one of these, so a caller can act on it without importing nats.


class WireError(JsqueueError):
    """A NATS operation failed; the subclass says whether trying again can help."""


class TransientError(WireError):
    """Try again: the server timed out, is electing a leader, or we are reconnecting."""


class RefusedError(WireError):
    """The server refused the operation for lack of permission."""


class InvalidError(WireError):
    """The operation can never succeed as sent: a bad key or subject, or over a size limit."""


class ConnectionLost(WireError):
    """The connection to NATS is closed for good; only a new client can go on."""


class PayloadTooLarge(PublishError, InvalidError):
    """The encoded job is larger than the server's max_payload; nothing was published."""


class PublishRefused(PublishError, InvalidError):
    """The server refused the message itself (a header too large, a subject no stream takes):
    sending it again cannot help."""


class PublishNotPermitted(PublishError, RefusedError):
    """This NATS user may not publish to the subject; nothing was published."""


class NotRegistered(JsqueueError, KeyError):
    """No task of that name is registered on this app."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DecodeError(JsqueueError):
    """A message could not be decoded into a job; ``raw`` keeps the bytes as received."""

    def __init__(self, message: str, raw: bytes = b"") -> None:
        super().__init__(message)
        self.raw = raw

    def __reduce__(self) -> tuple[type[DecodeError], tuple[str, bytes]]:
        return type(self), (str(self), self.raw)


class SignatureError(DecodeError):
    """A pickled payload was unsigned or wrongly signed; it was never unpickled."""


class MalformedError(DecodeError):
    """A field of the envelope has the wrong type or an illegal value (the message names it)."""


class SerializeError(JsqueueError):
    """Arguments or a return value cannot be encoded with the task's serializer."""


class ResultTooLarge(SerializeError):
    """A return value encodes to more than the result store accepts; the job fails once."""


class TaskFailed(JsqueueError):
    """The job failed; the remote exception is described as data, never unpickled."""

    def __init__(
        self,
        job_id: str,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
        state: str = "FAILURE",
    ) -> None:
        super().__init__(f"job {job_id} failed: {remote_type}: {remote_message}")
        self.job_id = job_id
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.state = state

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, str, str, str, str]]:
        args = (self.job_id, self.remote_type, self.remote_message, self.remote_traceback)
        return type(self), (*args, self.state)


class ResultTimeout(JsqueueError, TimeoutError):
    """No outcome was recorded for the job within the timeout."""


# Control flow raised inside a task. They are not errors of jsqueue itself, but they live in the
# same tree so that ``except JsqueueError`` in a task does not swallow them by accident.


class Retry(JsqueueError):
    """Raise inside a task to run it again after ``delay`` seconds (or the policy's wait)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or (f"retry in {delay}s" if delay is not None else "retry"))
        self.delay = delay
        self.reason = reason

    def __reduce__(self) -> tuple[type[Retry], tuple[float | None, str], dict[str, object]]:
        # the default replays args (the message) into ``delay``; a pool child pickles this
        return type(self), (self.delay, self.reason), dict(self.__dict__)


class Reject(JsqueueError):
    """Raise inside a task to dead-letter the job at once, without further attempts."""

    def __init__(self, reason: str = "rejected by the task") -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type[Reject], tuple[str], dict[str, object]]:
        return type(self), (self.reason,), dict(self.__dict__)


class ArgumentsError(JsqueueError, TypeError):
    """The arguments do not fit the task's signature."""


class TimeLimitExceeded(JsqueueError):
    """A task ran past its hard ``time_limit``: a coroutine was cancelled, a pool child killed."""


class WorkerLost(JsqueueError):
    """The job killed its worker process: it was running alone there when the worker died."""


class GroupFailed(JsqueueError):
    """Members of a group failed; ``failures`` maps member index to its :class:`TaskFailed`."""

    def __init__(self, failures: dict[int, TaskFailed], size: int) -> None:
        named = "; ".join(
            f"#{i} ({f.job_id}): {f.remote_type}: {f.remote_message}"
            for i, f in sorted(failures.items())[:10]
        )
        more = f"; and {len(failures) - 10} more" if len(failures) > 10 else ""
        super().__init__(f"{len(failures)} of {size} group members failed: {named}{more}")
        self.failures = failures
        self.size = size

    def __reduce__(self) -> tuple[type[GroupFailed], tuple[dict[int, TaskFailed], int]]:
        return type(self), (self.failures, self.size)


# Raised by the process pool (jsqueue.pools), which runs ``def`` tasks in child processes. They
# cross process boundaries, so each one with its own ``__init__`` says how to pickle itself.


class SoftTimeLimitExceeded(JsqueueError):
    """Raised inside a task (in a pool child, or an ``async def`` on the worker's loop) when its
    soft time limit passes: catch it to clean up and return (the value counts), or let it
    propagate; the hard limit still applies."""


class ChildDied(JsqueueError):
    """The pool child running the job died (a crash, the OOM killer, a kill from outside).

    Only that job failed; ``exitcode`` is the child's (negative: the signal that killed it).
    """

    def __init__(self, message: str, *, pid: int = 0, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[type[ChildDied], tuple[str], dict[str, object]]:
        return type(self), (str(self),), dict(self.__dict__)


class Terminated(JsqueueError):
    """The job was terminated on request (``revoke(terminate=True)``): its pool child was
    killed, or its coroutine cancelled."""


class PoolClosed(JsqueueError):
    """The process pool was closed before the job could start, or killed while it ran."""


class RemoteError(JsqueueError):
    """Stands in for an exception a task raised in a pool child that could not be sent back
    as itself (it would not pickle or unpickle): its type name, message and traceback text."""

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str], dict[str, object]]:
        args = (self.remote_type, self.remote_message, self.remote_traceback)
        return type(self), args, dict(self.__dict__)
