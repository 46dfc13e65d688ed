"""Handles on sent jobs: :class:`AsyncResult` for one, :class:`GroupResult` for a group.

A handle is an id and the app that can look it up (through :class:`~jsqueue.services.deps.Deps`):
waiting is pushed by the result store's shared watch, never polled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from jsqueue.errors import GroupFailed, JsqueueError, TaskFailed
from jsqueue.services.deps import Deps
from jsqueue.services.results import JobState
from jsqueue.sync import SyncHost, blocking

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """A handle on one job: its id, and its state and outcome once recorded."""

    def __init__(
        self, app: Deps, job_id: str, task: str | None = None, *, notified: bool = False
    ) -> None:
        self.app = app
        self.id = job_id
        self.task = task
        #: this process sent the job (its worker notifies this process of the outcome)
        self.notified = notified

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} task={self.task}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _sync_host(self) -> SyncHost:
        return self.app

    async def get(self, timeout: float | None = None) -> R:
        """Wait for the outcome: the return value, or :class:`TaskFailed`.

        Raises :class:`ResultTimeout` if nothing final is recorded within ``timeout`` seconds.
        """
        backend = await self.app.result_backend()
        outcome = await backend.wait(self.id, timeout, notified=self.notified)
        value: R = outcome.value(self.app.settings.secret_key)
        return value

    async def state(self) -> JobState:
        """The job's current state (PENDING if nothing is recorded)."""
        outcome = await (await self.app.result_backend()).read(self.id)
        return JobState.PENDING if outcome is None else outcome.state

    async def info(self) -> dict[str, Any]:
        """State, attempts, timestamps, worker and error text, as recorded."""
        outcome = await (await self.app.result_backend()).read(self.id)
        if outcome is None:
            return {"id": self.id, "state": JobState.PENDING.value}
        info = {k: v for k, v in outcome.record.items() if k not in ("pickle", "sig")}
        info["id"] = self.id
        return info

    async def ready(self) -> bool:
        """Whether a final outcome is recorded."""
        return (await self.state()).is_final

    async def forget(self) -> None:
        """Remove the job's record."""
        await (await self.app.result_backend()).forget(self.id)

    async def revoke(self, *, terminate: bool = False) -> bool:
        """Make sure a queued or delayed job never runs; its state becomes REVOKED.

        Returns False, changing nothing, if the job had already finished. A job already
        running goes on (its outcome is then not recorded: REVOKED stays), unless
        ``terminate=True``: its worker kills its pool child, or cancels it if it is a coroutine
        (a ``def`` task in the thread pool cannot be stopped and runs to its end).
        """
        return await (await self.app.result_backend()).revoke(self.id, terminate=terminate)

    get_sync = blocking(get)
    state_sync = blocking(state)
    info_sync = blocking(info)
    revoke_sync = blocking(revoke)


@dataclass
class GroupResult:
    """The results of a group's members, in order."""

    results: list[AsyncResult[Any]]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.results]

    def _sync_host(self) -> SyncHost:
        if not self.results:
            raise JsqueueError("this GroupResult has no members")
        return self.results[0].app

    async def get(self, timeout: float | None = None) -> list[Any]:
        """Every member's result, in order; :class:`GroupFailed` (after all finished) if any
        failed, naming them."""

        async def one(result: AsyncResult[Any]) -> Any:
            return await result.get(timeout)

        outcomes = await asyncio.gather(*(one(r) for r in self.results), return_exceptions=True)
        failures = {i: o for i, o in enumerate(outcomes) if isinstance(o, TaskFailed)}
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, TaskFailed):
                raise outcome
        if failures:
            raise GroupFailed(failures, len(self.results))
        return list(outcomes)

    get_sync = blocking(get)
