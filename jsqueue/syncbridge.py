"""One background event loop thread per app, for code without an event loop.

``delay_sync()``, ``get_sync()`` and friends run their coroutine on this loop (which keeps its own
NATS connection) and block the calling thread until it finishes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

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
