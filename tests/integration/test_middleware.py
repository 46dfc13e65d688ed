"""Middleware in real workers: before a publish, around jobs on the loop, in the thread pool
and in process-pool children, at worker and child start; failures are logged, jobs go on."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from jsqueue import App, JobContext, Middleware, SoftTimeLimitExceeded, TaskFailed, current_job
from jsqueue.envelope import Envelope
from jsqueue.testing import Process, burst, destroy

from .support import ROOT

TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")


class Recorder(Middleware):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen = name, seen

    def before_publish(self, envelope: Envelope, headers: dict[str, str]) -> None:
        headers[self.name] = envelope.task.rsplit(".", 1)[-1]

    async def around_job(self, job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        self.seen.append(f"{self.name}>{job.task.rsplit('.', 1)[-1]}")
        token = TENANT.set(f"tenant-of-{self.name}")
        try:
            return await call_next()
        except Exception as exc:
            self.seen.append(f"{self.name}!{type(exc).__name__}")
            raise
        finally:
            TENANT.reset(token)
            self.seen.append(f"<{self.name}")

    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        self.seen.append(f"{self.name}>>{threading.current_thread().name.split('_')[0]}")
        return call_next()

    async def on_worker_start(self, worker_id: str) -> None:
        self.seen.append(f"start {self.name}")

    async def on_worker_stop(self, worker_id: str) -> None:
        self.seen.append(f"stop {self.name}")


class Broken(Middleware):
    def before_publish(self, envelope: Envelope, headers: dict[str, str]) -> None:
        raise RuntimeError("broken")

    async def around_job(self, job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        raise RuntimeError("broken")

    async def on_worker_start(self, worker_id: str) -> None:
        raise RuntimeError("broken")


async def test_middleware_wraps_async_and_thread_jobs_in_order(
    jsq_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    jsq_app.add_middleware(Recorder("a", seen))
    jsq_app.add_middleware(Broken())
    jsq_app.add_middleware(Recorder("b", seen))
    runs: list[str] = []

    @jsq_app.task
    async def coro() -> dict[str, Any]:
        runs.append("coro")
        return {"headers": current_job().headers, "tenant": TENANT.get()}

    @jsq_app.task
    def plain() -> dict[str, Any]:
        runs.append("plain")
        return {"headers": current_job().headers, "thread": threading.current_thread().name}

    @jsq_app.task
    async def fails() -> None:
        raise KeyError("its own error")

    async with jsq_app:
        a = await coro.delay()
        await burst(jsq_app)
        assert seen == ["start a", "start b", "a>coro", "b>coro", "<b", "<a", "stop a", "stop b"]
        seen.clear()
        b = await plain.delay()
        c = await fails.delay()
        await burst(jsq_app, concurrency=1)
        got_a, got_b = await a.get(timeout=10), await b.get(timeout=10)
        with pytest.raises(TaskFailed, match="its own error"):
            await c.get(timeout=10)
    assert runs == ["coro", "plain"]  # once each although Broken failed around them
    # before_publish headers reach the task; the innermost contextvar is the task's
    assert got_a == {"headers": {"a": "coro", "b": "coro"}, "tenant": "tenant-of-b"}
    assert got_b["headers"] == {"a": "plain", "b": "plain"}
    assert got_b["thread"].startswith("jsqueue-task")
    assert seen[seen.index("a>plain") :][:6] == [
        "a>plain",
        "b>plain",
        "a>>jsqueue-task",  # around_job_sync runs in the pool's thread, after the async part
        "b>>jsqueue-task",
        "<b",
        "<a",
    ]
    assert "a!KeyError" in seen
    assert "b!KeyError" in seen
    broken = [r for r in caplog.records if r.name == "jsqueue.middleware"]
    assert len(broken) >= 4  # 3 publishes, 3 jobs, 2 worker starts
    assert all("Broken" in r.getMessage() for r in broken)


async def test_before_publish_sees_the_context_of_a_sync_caller(jsq_app: App) -> None:
    class Tenant(Middleware):
        def before_publish(self, envelope: Envelope, headers: dict[str, str]) -> None:
            headers["tenant"] = TENANT.get()

    jsq_app.add_middleware(Tenant())

    @jsq_app.task
    async def headers() -> dict[str, str]:
        return current_job().headers

    def view() -> str:  # a Django view, say: no event loop, its own context
        TENANT.set("from-the-view")
        return headers.delay_sync().id

    try:
        job_id = await asyncio.to_thread(view)
        async with jsq_app:
            await burst(jsq_app)
            assert await jsq_app.result(job_id).get(timeout=10) == {"tenant": "from-the-view"}
    finally:
        jsq_app.close_sync()


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
async def test_process_pool_children_start_middleware_and_run_it_around_jobs(
    nats_server: Any, jsq_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "mw.log"
    monkeypatch.setenv("JSQ_TEST_PREFIX", jsq_prefix)
    monkeypatch.setenv("JSQ_TEST_MW_LOG", str(log))
    monkeypatch.syspath_prepend(str(ROOT))
    import tests.apps.mwapp as mwapp

    app = mwapp.app
    app.configure(url=nats_server.url)
    worker = Process.jsqueue(
        *("worker", "-A", "tests.apps.mwapp:app", "--url", nats_server.url),
        *("--pool", "process", "-c", "1"),
        env={"JSQ_TEST_PREFIX": jsq_prefix, "JSQ_TEST_MW_LOG": str(log)},
        cwd=ROOT,
        log_dir=tmp_path,
        name="worker",
    )
    async with app:
        try:
            with worker:
                job = await mwapp.where.delay()
                got = await job.get(timeout=30)
                worker.signal(signal.SIGTERM)
                assert await asyncio.to_thread(worker.wait, 30) == 0
            seen = lines(log)
        finally:
            await destroy(app)
    kinds = [row[0] for row in seen]
    pid = {row[0]: int(row[1]) for row in seen}
    # the child that ran the job started the middleware, then ran around_job_sync for it
    assert got["pid"] == pid["child-start"] == pid["sync"]
    assert pid["worker-start"] == pid["around"] == pid["worker-stop"] == worker.pid
    assert got["pid"] != worker.pid
    assert kinds.index("worker-start") < kinds.index("child-start") < kinds.index("sync")
    assert kinds[-1] == "worker-stop"
    # before_publish ran in this process; around_job's header reached the child
    assert got["headers"] == {"sent-by": str(os.getpid()), "tenant": "acme"}
    out = worker.output()
    assert "Broken failed on the start of a pool child" in out
    assert "Broken failed around job" in out


async def test_time_limits_and_revokes_hold_through_middleware(jsq_app: App) -> None:
    seen: list[str] = []
    jsq_app.add_middleware(Recorder("a", seen))

    @jsq_app.task(soft_time_limit=0.3, time_limit=5)
    async def soft() -> str:
        try:
            await asyncio.sleep(10)
        except SoftTimeLimitExceeded:
            return "stopped softly"
        return "slept"

    @jsq_app.task(time_limit=0.3)
    async def hard() -> None:
        await asyncio.sleep(10)

    async with jsq_app:
        a, b = await soft.delay(), await hard.delay()
        await burst(jsq_app)
        assert await a.get(timeout=10) == "stopped softly"
        with pytest.raises(TaskFailed, match="time_limit"):
            await b.get(timeout=10)
    assert "a!TimeLimitExceeded" not in seen  # the hard limit cancels: no exception of ours
    assert seen.count("<a") == 2  # both jobs left the middleware
