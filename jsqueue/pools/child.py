"""The child side of the process pool: load the app once, then run one job at a time until told
to stop, and never outlive the worker.

The forkserver forks each child (see :mod:`jsqueue.pools.process` for why). First the child arms
``PR_SET_PDEATHSIG`` (SIGKILL when its parent, the forkserver, exits) and closes its copy of the
forkserver's "alive" pipe, which multiprocessing hands to every child: while any child held it,
the forkserver would outlive a SIGKILLed worker and the death signal would never come. Then it
checks that the forkserver and the worker are still there, for the case where one of them died
before the signal was armed.

Jobs run in the main thread, so a soft time limit can interrupt them: the parent sends
``SIGUSR1`` and the handler raises :class:`SoftTimeLimitExceeded` only while a job with a soft
limit runs and only once. Task code can :func:`report` to the parent while its job runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import multiprocessing
import os
import pickle
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import forkserver
from types import FrameType
from typing import Any

from jsqueue import progress
from jsqueue.app import App, load_app
from jsqueue.context import current_job, reset_current, set_current, sink_to
from jsqueue.errors import NotRegistered, SerializeError, SoftTimeLimitExceeded
from jsqueue.middleware import child_started, child_stopped, run_job_sync
from jsqueue.pools import protocol
from jsqueue.pools.protocol import (
    ChildConfig,
    ChildJob,
    Done,
    Message,
    Ready,
    Report,
    RunJob,
    Skip,
)
from jsqueue.task import Task

_PR_SET_PDEATHSIG = 1
#: the exit code of a child that finds itself orphaned before it could arm PDEATHSIG
EXIT_ORPHANED = 70
#: bytes asked of the socket at a time (a job's frame is usually a few hundred)
_RECV_SIZE = 65536
#: seconds between reads of the child's resident memory when nothing recycles by memory
_RSS_EVERY = 1.0


@dataclass
class _Running:
    job: ChildJob
    soft_armed: bool


class _Channel:
    """The child's end of the socket: whole frames, from the main thread or a task's threads."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._lock = threading.Lock()
        self._buffer = bytearray()  # what arrived beyond the last whole frame

    def send(self, message: Message) -> None:
        data = protocol.frame(message)
        if _soft_limit_may_raise():
            # the soft-limit handler raises: it must not cut a frame in half
            with _soft_limit_held(), self._lock:
                self._sock.sendall(data)
        else:
            with self._lock:
                self._sock.sendall(data)

    def receive(self) -> Message:
        """The next message; EOFError when the parent closed its end. One ``recv`` usually
        brings a whole frame, header and body."""
        header = protocol.header_size()
        self._fill(header)
        self._fill(header + protocol.body_size(bytes(self._buffer[:header])))
        message = protocol.take(self._buffer)
        assert message is not None  # a whole frame is in the buffer
        return message

    def arrived(self) -> list[Message]:
        """The messages that have arrived whole, without waiting for more (a Skip the parent
        sent while the job before ran)."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while chunk := self._sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT):
                self._buffer += chunk
        messages = []
        while (message := protocol.take(self._buffer)) is not None:
            messages.append(message)
        return messages

    def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            chunk = self._sock.recv(max(_RECV_SIZE, size - len(self._buffer)))
            if not chunk:
                raise EOFError("the pool's parent closed the channel")
            self._buffer += chunk


class _State:
    """What this child process is doing; one per process."""

    channel: _Channel | None = None
    running: _Running | None = None
    #: read the resident memory after every job (the pool recycles by it), else every _RSS_EVERY
    track_memory = False
    rss_read_at: float | None = None  # monotonic time of the last read


_state = _State()


def report(kind: str, **data: Any) -> bool:
    """Send ``kind`` and ``data`` to the worker while a job runs in a pool child; the pool calls
    its ``on_report(job_id, kind, data)``. False (and nothing sent) outside a pool job.

    ``data`` must pickle; :class:`SerializeError` if it does not.
    """
    channel, running = _state.channel, _state.running
    if channel is None or running is None:
        return False
    blob = protocol.dump_blob(data, what=f"the data of report({kind!r})")
    channel.send(Report(running.job.job_id, kind, blob))
    return True


def _report_progress(job_id: str, kind: str, data: dict[str, Any]) -> None:
    """Progress of ``job_id`` to the worker, unless that job is over (a late timer's)."""
    running = _state.running
    if running is not None and running.job.job_id == job_id:
        report(kind, **data)


def serve(sock: socket.socket, config: ChildConfig) -> None:
    """The body of a pool child (the multiprocessing target): serve jobs until stopped."""
    _tie_to_parent(config.expected_ppid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the process group: the worker decides
    signal.signal(protocol.SOFT_LIMIT_SIGNAL, _on_soft_limit)
    channel = _Channel(sock)
    try:
        app = _load(channel, config)
        if app is None:
            return
        _state.channel = channel
        _state.track_memory = config.track_memory
        child_started(app.middleware)
        channel.send(Ready(os.getpid()))
        waiting: deque[Message] = deque()  # arrived behind the job it runs next
        skipped: set[str] = set()
        while True:
            message = waiting.popleft() if waiting else channel.receive()
            for later in channel.arrived():  # a Skip of this very job may be among them
                if isinstance(later, Skip):
                    skipped.add(later.job_id)
                else:
                    waiting.append(later)
            if isinstance(message, Skip):
                skipped.add(message.job_id)
                continue
            if not isinstance(message, RunJob):
                child_stopped(app.middleware)
                return  # Stop, or nonsense: either way this child is done
            if message.job_id in skipped:
                skipped.discard(message.job_id)
                continue  # terminated before it started: the parent settled it
            channel.send(_run(app, message, config.worker_id))
    except (EOFError, OSError):
        return  # the parent is gone or closed the channel: nobody is left to tell


def _tie_to_parent(expected_ppid: int | None) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    _release_forkserver_alive_fd()
    parent = multiprocessing.parent_process()
    if expected_ppid is not None and os.getppid() != expected_ppid:
        os._exit(EXIT_ORPHANED)  # the forkserver died before the death signal was armed
    if parent is not None and not parent.is_alive():
        os._exit(EXIT_ORPHANED)  # the worker is gone: the forkserver will follow


def _release_forkserver_alive_fd() -> None:
    # multiprocessing gives every forkserver child the worker's end of the pipe that tells the
    # forkserver to exit; a child keeping it would keep the forkserver (its parent) alive
    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        setattr(server, "_forkserver_alive_fd", None)  # noqa: B010 - a private attribute


def _load(channel: _Channel, config: ChildConfig) -> App | None:
    try:
        os.chdir(config.cwd)
        sys.path[:] = config.sys_path
        return load_app(config.app_spec)
    except BaseException as exc:
        summary = "".join(traceback.format_exception_only(exc)).strip()
        channel.send(protocol.StartFailed(summary, "".join(traceback.format_exception(exc))))
        return None


def _run(app: App, message: RunJob, worker_id: str) -> Done:
    started = time.monotonic()
    try:
        job = protocol.load_job(message.body)
    except Exception as exc:
        what = f"the arguments of job {message.job_id} ({message.task})"
        return _failure(message.job_id, SerializeError(f"{what} cannot be unpickled: {exc!r}"))
    task = app.tasks.get(job.task)
    if task is None:
        missing = NotRegistered(f"no task named {job.task!r} is registered on app {app.name}")
        return _failure(job.job_id, missing)
    ok, result, text = _call(app, task, job, job.worker or worker_id)
    duration = time.monotonic() - started
    if ok:
        try:
            blob = protocol.dump_blob(result, what=f"the return value of task {job.task}")
        except SerializeError as exc:
            return _failure(job.job_id, exc, duration=duration)
        return Done(job.job_id, ok=True, value=blob, rss_mb=_rss_due(), duration=duration)
    return _failure(job.job_id, result, text, duration)


def _body(task: Task[Any, Any], job: ChildJob) -> Any:
    value = task.fn(*job.args, **job.kwargs)
    return asyncio.run(value) if inspect.iscoroutine(value) else value


def _call(app: App, task: Task[Any, Any], job: ChildJob, worker: str) -> tuple[bool, Any, str]:
    """Run the task function: (True, value, "") or (False, exception, traceback text)."""
    sink = sink_to(_report_progress, job.job_id, progress.in_thread)
    token = set_current(job.envelope(), job.attempt, worker, sink)
    try:
        _state.running = _Running(job, soft_armed=job.soft_time_limit is not None)
        try:
            if app.middleware:
                value = run_job_sync(app.middleware, current_job(), lambda: _body(task, job))
            else:
                value = _body(task, job)
        finally:
            _state.running = None  # from here on a soft-limit signal does nothing
        return True, value, ""
    except BaseException as exc:  # a late soft-limit signal lands here too, never outside
        return False, exc, "".join(traceback.format_exception(exc))
    finally:
        reset_current(token)


def _failure(job_id: str, exc: BaseException, text: str = "", duration: float = 0.0) -> Done:
    blob: bytes | None
    try:
        blob = protocol.dump_blob(exc, what="the exception")
        pickle.loads(blob)  # pickles but does not load: e.g. an __init__ that its args do not fit
    except Exception:
        blob = None
    try:
        message = str(exc)
    except Exception as err:
        message = f"<str() failed: {err!r}>"
    return Done(
        job_id,
        ok=False,
        error=blob,
        error_type=type_name(type(exc)),
        error_message=message,
        traceback=text,
        rss_mb=_rss_due(),
        duration=duration,
    )


def type_name(cls: type) -> str:
    """``module.Qualname`` of a class, bare for builtins."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _rss_due() -> float | None:
    """This child's resident memory for a Done: after every job when the pool recycles by
    memory, else at most every ``_RSS_EVERY`` seconds (None in between: the parent keeps the
    last figure)."""
    now = time.monotonic()
    last = _state.rss_read_at
    if _state.track_memory or last is None or now - last >= _RSS_EVERY:
        _state.rss_read_at = now
        return rss_mb()
    return None


def rss_mb() -> float | None:
    """This process's resident memory in MB (/proc/self/statm; else the peak from getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB; bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _on_soft_limit(signum: int, frame: FrameType | None) -> None:
    running = _state.running
    if running is None or not running.soft_armed:
        return  # between jobs, or already raised once for this job
    running.soft_armed = False
    job = running.job
    raise SoftTimeLimitExceeded(
        f"job {job.job_id} ({job.task}) ran past its soft_time_limit of {job.soft_time_limit}s"
    )


def _soft_limit_may_raise() -> bool:
    """Whether the soft-limit handler could raise in the main thread now: a job with a soft
    limit runs and has not had it yet. Other threads never run Python signal handlers."""
    running = _state.running
    return (
        running is not None
        and running.soft_armed
        and threading.current_thread() is threading.main_thread()
    )


@contextlib.contextmanager
def _soft_limit_held() -> Iterator[None]:
    """Hold the soft-limit signal in this thread for the block; it is handled right after."""
    held = {protocol.SOFT_LIMIT_SIGNAL}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        if protocol.SOFT_LIMIT_SIGNAL not in previous:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
