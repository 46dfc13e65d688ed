"""What a service may ask of the app that uses it: settings, the broker, the result store, and
how a task is routed. The App provides it (structurally); services never import the App.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from jsqueue.config import Settings
from jsqueue.services.producer import Route
from jsqueue.services.results import ResultBackend
from jsqueue.wire.broker import Broker

__all__ = ["Deps", "Route"]

T = TypeVar("T")


class Deps(Protocol):
    """The connected app, as services see it."""

    @property
    def settings(self) -> Settings: ...
    async def broker(self) -> Broker: ...
    async def result_backend(self) -> ResultBackend: ...
    def route(self, task: str) -> Route | None: ...
    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T: ...
