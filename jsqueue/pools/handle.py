"""The parent's handle on one pool child: start it through the forkserver, talk to it, kill it,
and collect its exit status, without blocking the event loop.

Every call into multiprocessing (starting a process, reading its exit code, closing it) runs on
one launcher thread that all pools share and that lives as long as the process. ``Process.start``
blocks until the forkserver has forked (the first time, until it has imported the preloaded
modules), and multiprocessing reads a child's exit code from its sentinel pipe in whichever
thread asks, so two threads could each take half of one exit code. The event loop itself only
watches file descriptors: the child's socket through asyncio streams and its sentinel with
``add_reader``. No thread per child.

A child of the forkserver is not our child, so a plain ``kill(pid)`` could hit a reused pid after
the forkserver reaped it; on Linux the handle holds a pidfd, opened as soon as the child has
started, and signals through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from multiprocessing import forkserver
from multiprocessing.process import BaseProcess

from jsqueue.errors import ConfigError
from jsqueue.pools import child, protocol
from jsqueue.pools.protocol import ChildConfig, Message, Ready, StartFailed

log = logging.getLogger("jsqueue.pool")

#: bytes taken from a child's socket at a time (a Done is usually a few hundred)
_READ_SIZE = 65536

_launcher_lock = threading.Lock()
_launcher_executor: list[ThreadPoolExecutor] = []


def launcher() -> ThreadPoolExecutor:
    """The one thread that makes every multiprocessing call of every pool (started on first use)."""
    with _launcher_lock:
        if not _launcher_executor:
            _launcher_executor.append(ThreadPoolExecutor(1, thread_name_prefix="jsqueue-pool"))
        return _launcher_executor[0]


def preload_modules(app_spec: str) -> list[str]:
    """What the forkserver imports once for all children: jsqueue's child side, and the app
    module if this process has imported it (so it is known to import without raising, which
    would kill the forkserver: it tolerates only ImportError)."""
    module = app_spec.partition(":")[0]
    return ["jsqueue.pools.child", *([module] if module in sys.modules else [])]


def describe_exit(code: int | None) -> str:
    """How a child ended, for error messages: 'exited with code 1', 'was killed by SIGSEGV'."""
    if code is None:
        return "vanished (its exit status could not be read)"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = " (from outside, or by the kernel's OOM killer: see dmesg)" if name == "SIGKILL" else ""
    return f"was killed by {name}{hint}"


class ChildHandle:
    """One running child as the parent sees it. Create with :func:`launch`."""

    def __init__(
        self, proc: BaseProcess, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert proc.pid is not None
        self.proc = proc
        self.pid: int = proc.pid
        self.jobs_done = 0
        self.rss_mb: float | None = None
        self.retiring = False
        self.exitcode: int | None = None
        self.exited = asyncio.Event()
        self._reader = reader
        self._writer = writer
        self._buffer = bytearray()  # what arrived beyond the last whole message
        self._gone = False  # the forkserver may have reaped it: never signal its pid again
        self._stop_timer: asyncio.TimerHandle | None = None
        self._pidfd: int | None = None
        if sys.platform == "linux":
            with contextlib.suppress(OSError):
                self._pidfd = os.pidfd_open(self.pid)

    def __repr__(self) -> str:
        return f"<ChildHandle pid={self.pid} jobs_done={self.jobs_done}>"

    async def receive(self) -> Message:
        """The next message; IncompleteReadError or OSError when the child is gone."""
        while (message := self._buffered()) is None:
            await self._more()
        return message

    async def arrived(self) -> None:
        """Wait until a whole message has arrived (then :meth:`take` it and any behind it);
        IncompleteReadError or OSError when the child is gone. One read per batch."""
        while not self._whole():
            await self._more()

    def take(self) -> Message | None:
        """The next message that has arrived, or None; ValueError for one that is no message."""
        return self._buffered()

    def _whole(self) -> bool:
        size = protocol.frame_size(self._buffer)
        return size is not None and len(self._buffer) >= size

    async def _more(self) -> None:
        chunk = await self._reader.read(_READ_SIZE)
        if not chunk:
            raise asyncio.IncompleteReadError(bytes(self._buffer), None)
        self._buffer += chunk

    def _buffered(self) -> Message | None:
        """The first whole message in the buffer, taken out of it; None if there is none yet."""
        return protocol.take(self._buffer)

    async def send(self, message: Message) -> None:
        """Write a message; wait only while the socket's buffer is full (OSError if the child
        is gone)."""
        self._writer.write(protocol.frame(message))
        if self._writer.transport.get_write_buffer_size():
            await self._writer.drain()

    def post(self, message: Message) -> None:
        """Write a message without waiting (the socket's buffer takes it)."""
        self._writer.write(protocol.frame(message))

    def stop(self, grace: float) -> None:
        """Ask an idle child to exit; SIGKILL it if it has not after ``grace`` seconds."""
        self._writer.write(protocol.frame(protocol.Stop()))
        loop = asyncio.get_running_loop()
        self._stop_timer = loop.call_later(grace, self.kill)

    def kill(self) -> None:
        """SIGKILL the child now (nothing if it is already gone)."""
        self.signal(signal.SIGKILL)

    def signal(self, sig: signal.Signals) -> None:
        if self._gone:
            return
        with contextlib.suppress(ProcessLookupError):
            if sys.platform == "linux" and self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)

    async def reap(self, grace: float = 5.0) -> int | None:
        """Close the channel, wait for the child to end (SIGKILL after ``grace`` seconds) and
        return its exit code (negative: the signal), None if it could not be read."""
        self._writer.transport.abort()
        if not await self._ended(grace):
            log.error("pool child %d closed its channel but did not exit; killing it", self.pid)
            self.kill()
            if not await self._ended(grace):
                log.error("pool child %d did not exit after SIGKILL; giving up on it", self.pid)
                self._finish(None)
                return None
        self._gone = True
        code = await asyncio.get_running_loop().run_in_executor(launcher(), _collect, self.proc)
        self._finish(code)
        return code

    async def _ended(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        fd = self.proc.sentinel

        def readable() -> None:
            if not ended.done():
                ended.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(ended, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)

    def _finish(self, code: int | None) -> None:
        self.exitcode = code
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.exited.set()


async def launch(config: ChildConfig, preload: Sequence[str], timeout: float) -> ChildHandle:
    """Start a child and wait until it has loaded the app; :class:`ConfigError` quoting the
    child's error if it cannot."""
    loop = asyncio.get_running_loop()
    parent_sock, child_sock = socket.socketpair()
    try:
        try:
            proc = await loop.run_in_executor(
                launcher(), _start_process, child_sock, config, list(preload)
            )
        finally:
            child_sock.close()  # the child has its own copy now
        reader, writer = await asyncio.open_connection(sock=parent_sock)
    except BaseException:
        parent_sock.close()
        raise
    handle = ChildHandle(proc, reader, writer)
    spec = config.app_spec
    try:
        first = await asyncio.wait_for(handle.receive(), timeout)
    except TimeoutError:
        handle.kill()
        await handle.reap()
        raise ConfigError(
            f"a pool child did not load the app {spec!r} within {timeout}s; is importing it "
            "slow or stuck?"
        ) from None
    except (asyncio.IncompleteReadError, OSError, ValueError):
        code = await handle.reap()
        raise ConfigError(
            f"pool child {handle.pid} {describe_exit(code)} before it loaded the app {spec!r}"
        ) from None
    if isinstance(first, Ready):
        return handle
    await handle.reap()
    if isinstance(first, StartFailed):
        log.error("a pool child could not load the app %r:\n%s", spec, first.traceback)
        raise ConfigError(f"a pool child could not load the app {spec!r}: {first.summary}")
    raise ConfigError(f"pool child {handle.pid} sent {type(first).__name__} instead of Ready")


def _start_process(sock: socket.socket, config: ChildConfig, preload: list[str]) -> BaseProcess:
    """On the launcher thread: start a forkserver child serving on ``sock``."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)  # takes effect when the forkserver (re)starts
    forkserver.ensure_running()
    server_pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    if isinstance(server_pid, int):
        config = replace(config, expected_ppid=server_pid)
    proc = context.Process(
        target=child.serve, args=(sock, config), name="jsqueue-pool-child", daemon=True
    )
    proc.start()
    return proc


def _collect(proc: BaseProcess) -> int | None:
    """On the launcher thread, once the sentinel is readable: the exit code; frees the process."""
    code = proc.exitcode
    if code is not None:
        proc.close()
    return code
