"""One background event loop thread per app, for code without an event loop.

``delay_sync()``, ``get_sync()`` and friends run their coroutine on this loop (which keeps its own
NATS connection) and block the calling thread until it finishes. Every one of them is made by
:func:`blocking` from its coroutine twin, so both take the same typed arguments.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar, cast

from jsqueue.errors import JsqueueError

T = TypeVar("T")


class LoopThread:
    """A daemon thread running an event loop, started on first use."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the background loop and return its result."""
        loop = self._start()
        if threading.current_thread() is self._thread:
            coro.close()
            raise JsqueueError("a *_sync() method was called from inside jsqueue's own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result(timeout)

    def stop(self, closer: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run ``closer`` on the loop (if given), then stop the loop and join the thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if closer is not None:

            async def close() -> None:
                await closer()

            asyncio.run_coroutine_threadsafe(close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


class SyncHost(Protocol):
    """Whatever runs coroutines for code without an event loop (the App)."""

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T: ...


class HasSyncHost(Protocol):
    def _sync_host(self) -> SyncHost: ...


P = ParamSpec("P")
R = TypeVar("R")


def blocking(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """The blocking twin of a coroutine method, with the same parameters: it runs the coroutine
    on the app's loop thread (see :class:`LoopThread`) and returns its result. The one way
    jsqueue makes its ``*_sync`` methods, for Django views, scripts and other code without a
    running event loop; the method's class provides ``_sync_host()``."""
    inner: Callable[P, Coroutine[Any, Any, R]] = getattr(method, "__wrapped__", method)

    def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        host = cast(HasSyncHost, args[0])._sync_host()
        return host.run_sync(inner(*args, **kwargs))

    twin.__name__ = f"{inner.__name__}_sync"
    twin.__qualname__ = f"{inner.__qualname__}_sync"
    twin.__doc__ = f":meth:`{inner.__name__}` for code without an event loop: blocks until done."
    return twin


def needs_loop(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A coroutine method that fails at once, naming its ``*_sync`` twin, when called where no
    event loop runs (instead of making a coroutine that is never awaited)."""

    def checked(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            who = getattr(args[0], "name", type(args[0]).__name__)
            raise JsqueueError(
                f"{who}.{method.__name__}() needs a running event loop (await it in async "
                f"code); in synchronous code call {who}.{method.__name__}_sync(...) instead"
            ) from None
        return method(*args, **kwargs)

    checked.__name__ = method.__name__
    checked.__qualname__ = method.__qualname__
    checked.__doc__ = method.__doc__
    checked.__wrapped__ = method  # type: ignore[attr-defined]
    return checked
