"""How a chain of middleware runs a job: order, failures that are logged, errors that pass."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from jsqueue import JobContext, Middleware
from jsqueue.envelope import Envelope
from jsqueue.middleware import prepare, run_job, run_job_sync

JOB = JobContext(id="j1", task="t", attempt=1, queue="default", worker="w")


class Tag(Middleware):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    async def around_job(self, job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        self.seen.append(f"{self.name}>")
        try:
            return await call_next()
        finally:
            self.seen.append(f"<{self.name}")

    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        self.seen.append(f"{self.name}>")
        try:
            return call_next()
        finally:
            self.seen.append(f"<{self.name}")


class FailsBefore(Middleware):
    async def around_job(self, job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        raise RuntimeError("before")

    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        raise RuntimeError("before")


class FailsAfter(Middleware):
    async def around_job(self, job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        await call_next()
        raise RuntimeError("after")

    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        call_next()
        raise RuntimeError("after")


class Twice(Middleware):
    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        call_next()
        return call_next()


async def test_async_chain_runs_in_registration_order_and_survives_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []
    runs: list[int] = []

    async def body() -> int:
        runs.append(1)
        seen.append("run")
        return 42

    chain = [Tag("a", seen), FailsBefore(), Tag("b", seen), FailsAfter()]
    assert await run_job(chain, JOB, body) == 42
    assert seen == ["a>", "b>", "run", "<b", "<a"]
    assert runs == [1]  # the job ran once although one middleware failed before it
    failures = [r for r in caplog.records if "the job goes on" in r.getMessage()]
    assert [r.getMessage().split()[1] for r in failures] == ["FailsBefore", "FailsAfter"]


async def test_a_tasks_error_passes_through_middleware_untouched() -> None:
    seen: list[str] = []

    async def body() -> None:
        raise KeyError("the task's own")

    with pytest.raises(KeyError, match="the task's own"):
        await run_job([Tag("a", seen), FailsAfter()], JOB, body)
    assert seen == ["a>", "<a"]


def test_sync_chain_same_rules() -> None:
    seen: list[str] = []
    assert run_job_sync([FailsBefore(), Tag("a", seen), FailsAfter()], JOB, lambda: 7) == 7
    assert seen == ["a>", "<a"]

    def boom() -> None:
        raise ValueError("task")

    with pytest.raises(ValueError, match="task"):
        run_job_sync([Tag("a", []), FailsBefore()], JOB, boom)


def test_calling_next_twice_is_a_logged_failure_and_the_job_ran_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    assert run_job_sync([Twice()], JOB, lambda: runs.append(1) or 5) == 5
    assert runs == [1]
    assert any("called call_next() twice" in r.getMessage() for r in caplog.records)


def test_prepare_adds_headers_and_drops_what_is_not_str(caplog: pytest.LogCaptureFixture) -> None:
    class Adds(Middleware):
        def before_publish(self, envelope: Envelope, headers: dict[str, str]) -> None:
            headers["tenant"] = "acme"
            headers["bad"] = 3  # type: ignore[assignment]

    class Raises(Middleware):
        def before_publish(self, envelope: Envelope, headers: dict[str, str]) -> None:
            raise RuntimeError("no")

    env = Envelope(id="j1", task="t", args=(), kwargs={}, queue="default", headers={"x": "1"})
    out = prepare([Raises(), Adds()], env)
    assert out.headers == {"x": "1", "tenant": "acme"}
    assert env.headers == {"x": "1"}  # the caller's envelope is not changed
    assert prepare([], env) is env
    assert prepare([Raises()], env) is env
    assert "non-str headers ['bad']" in caplog.text
