"""Handles on sent jobs: :class:`AsyncResult` for one, :class:`GroupResult` for a group.

A handle is an id and the app that can look it up (through :class:`~jsqueue.services.deps.Deps`):
waiting is pushed by the result store's shared watch, never polled. A group's state is read in
one request, however many members it has: its members are named ``<group id>.<index>``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, Generic, TypeAlias, TypeVar

from jsqueue import nodes
from jsqueue.errors import GroupFailed, JsqueueError, TaskFailed
from jsqueue.nodes import Node
from jsqueue.progress import Progress
from jsqueue.services.deps import Deps
from jsqueue.services.records import Outcome
from jsqueue.services.results import JobState
from jsqueue.sync import SyncHost, blocking

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """A handle on one job: its id, and its state and outcome once recorded."""

    def __init__(
        self,
        app: Deps,
        job_id: str,
        task: str | None = None,
        *,
        notified: bool = False,
        parent: Handle | None = None,
    ) -> None:
        self.app = app
        self.id = job_id
        self.task = task
        #: this process sent the job (its worker notifies this process of the outcome)
        self.notified = notified
        #: for a step of a chain, the handle of the step before it (a chord's callback: the
        #: header's :class:`GroupResult`); None for a first step or a job looked up by id
        self.parent = parent
        self._final: Outcome | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} task={self.task}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _sync_host(self) -> SyncHost:
        return self.app

    def _deps(self) -> Deps:
        return self.app

    async def get(self, timeout: float | None = None) -> R:
        """Wait for the outcome: the return value, or :class:`TaskFailed`.

        Raises :class:`ResultTimeout` if nothing final is recorded within ``timeout`` seconds.
        """
        outcome = await self._outcome(timeout)
        value: R = outcome.value(self.app.settings.secret_key)
        return value

    async def _outcome(self, timeout: float | None) -> Outcome:
        """The final outcome, waited for once and then kept (a final record never changes)."""
        if self._final is None:
            backend = await self.app.result_backend()
            self._final = await backend.wait(self.id, timeout, notified=self.notified)
        return self._final

    async def state(self) -> JobState:
        """The job's current state (PENDING if nothing is recorded)."""
        if self._final is not None:
            return self._final.state
        outcome = await (await self.app.result_backend()).read(self.id)
        return JobState.PENDING if outcome is None else outcome.state

    async def info(self) -> dict[str, Any]:
        """State, attempts, timestamps, worker, progress and error text, as recorded."""
        outcome = await (await self.app.result_backend()).read(self.id)
        if outcome is None:
            return {"id": self.id, "state": JobState.PENDING.value}
        info = {k: v for k, v in outcome.record.items() if k not in ("pickle", "sig")}
        info["id"] = self.id
        return info

    async def progress(self) -> Progress | None:
        """What the running task last reported with ``current_job().progress(...)`` (about a
        second stale at most); None if it reported nothing or is no longer running."""
        outcome = await (await self.app.result_backend()).read(self.id)
        return None if outcome is None else Progress.of(outcome.record)

    async def ready(self) -> bool:
        """Whether a final outcome is recorded."""
        return (await self.state()).is_final

    async def forget(self) -> None:
        """Remove the job's record."""
        self._final = None
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
    progress_sync = blocking(progress)
    ready_sync = blocking(ready)
    revoke_sync = blocking(revoke)


class GroupResult:
    """The results of a group's members, in order (a member that is itself a group, as a
    chain ending in a group is, has a :class:`GroupResult` of its own)."""

    def __init__(
        self,
        results: Sequence[Handle],
        *,
        group_id: str | None = None,
        parent: Handle | None = None,
    ) -> None:
        self.results = list(results)
        #: the group's id: its members' ids are ``<id>.<index>`` (None for members named
        #: otherwise, whose states are then read one by one)
        self.id = group_id
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} of {len(self.results)}>"

    def __len__(self) -> int:
        return len(self.results)

    @property
    def ids(self) -> list[str]:
        """The members' job ids (a member group's id, or None, for a member group)."""
        return [str(r.id) for r in self.results]

    def _deps(self) -> Deps:
        if not self.results:
            raise JsqueueError("this GroupResult has no members")
        return self.results[0]._deps()

    def _sync_host(self) -> SyncHost:
        return self._deps()

    async def get(self, timeout: float | None = None) -> list[Any]:
        """Every member's result, in order; :class:`GroupFailed` (after all finished) if any
        failed, naming them."""

        async def one(result: Handle) -> Any:
            return await result.get(timeout)

        outcomes = await asyncio.gather(*(one(r) for r in self.results), return_exceptions=True)
        failures: dict[int, TaskFailed] = {}
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, GroupFailed):
                failures[i] = next(iter(outcome.failures.values()))
            elif isinstance(outcome, TaskFailed):
                failures[i] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        if failures:
            raise GroupFailed(failures, len(self.results))
        return list(outcomes)

    async def states(self) -> list[JobState]:
        """Each member's state now, in order, read in one request (a member group's: SUCCESS
        when all of it succeeded, FAILURE once any of it failed, PENDING otherwise)."""
        if not self.results:
            return []
        backend = await self._deps().result_backend()
        known: dict[str, Outcome] = {}
        if self.id is not None:
            known = await backend.read_many(f"{self.id}.*")
        states: list[JobState] = []
        for member in self.results:
            if isinstance(member, GroupResult):
                states.append(_together(await member.states()))
            elif member._final is not None:
                states.append(member._final.state)
            elif member.id in known:
                states.append(known[member.id].state)
            elif self.id is not None and member.id.startswith(f"{self.id}."):
                states.append(JobState.PENDING)  # not recorded yet
            else:
                states.append(await member.state())
        return states

    async def completed_count(self) -> int:
        """How many members succeeded."""
        return sum(state is JobState.SUCCESS for state in await self.states())

    async def ready(self) -> bool:
        """Whether every member has finished (succeeded or not)."""
        return all(state.is_final for state in await self.states())

    async def successful(self) -> bool:
        """Whether every member succeeded."""
        return all(state is JobState.SUCCESS for state in await self.states())

    async def failed(self) -> bool:
        """Whether any member finished without success."""
        return any(s.is_final and s is not JobState.SUCCESS for s in await self.states())

    async def as_completed(self, timeout: float | None = None) -> AsyncIterator[Handle]:
        """The members as they finish, first finished first; ``await member.get()`` then gives
        its value (or raises its failure) without another wait.

        ``async for done in group_result.as_completed(timeout=60): print(await done.get())``.
        :class:`ResultTimeout` if a member is not done within ``timeout`` seconds.
        """

        async def finished(member: Handle) -> Handle:
            with contextlib.suppress(TaskFailed, GroupFailed):
                await member.get(timeout)
            return member

        waits = [asyncio.ensure_future(finished(member)) for member in self.results]
        try:
            for done in asyncio.as_completed(waits):
                yield await done
        finally:
            for wait in waits:
                wait.cancel()

    get_sync = blocking(get)
    states_sync = blocking(states)
    completed_count_sync = blocking(completed_count)
    ready_sync = blocking(ready)
    successful_sync = blocking(successful)
    failed_sync = blocking(failed)


#: A handle on something sent: one job, or a group of them.
Handle: TypeAlias = AsyncResult[Any] | GroupResult


def _together(states: list[JobState]) -> JobState:
    if any(s.is_final and s is not JobState.SUCCESS for s in states):
        return JobState.FAILURE
    if all(s is JobState.SUCCESS for s in states):
        return JobState.SUCCESS
    return JobState.PENDING


def handle_of(app: Deps, node: Node, parent: Handle | None = None) -> Handle:
    """The handle on ``node``'s result, with its ``parent`` chain of handles as in Celery: a
    step's parent is the step before it, a chord callback's its header's group."""
    shape = nodes.kind(node)
    if shape == "group":
        members = [handle_of(app, part, parent) for part in node["group"]]
        return GroupResult(members, group_id=_group_id(members), parent=parent)
    if shape == "chord":
        header = [handle_of(app, part, parent) for part in node["header"]]
        return handle_of(app, node["body"], GroupResult(header, group_id=_group_id(header)))
    handle = AsyncResult[Any](
        app, nodes.job_id(node), str(node["task"]), notified=True, parent=parent
    )
    following = nodes.next_node(node)
    return handle if following is None else handle_of(app, following, handle)


def _group_id(members: list[Handle]) -> str | None:
    """The group id when every member is named ``<group id>.<index>``."""
    ids = [m.id for m in members]
    if not ids or not isinstance(ids[0], str) or "." not in ids[0]:
        return None
    prefix = ids[0].rsplit(".", 1)[0]
    return prefix if ids == [f"{prefix}.{i}" for i in range(len(ids))] else None
