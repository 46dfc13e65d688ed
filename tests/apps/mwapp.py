"""An app with middleware that writes what it saw to a file (``JSQ_TEST_MW_LOG``), for worker
processes with the process pool: each line is "what pid detail"."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jsqueue import App, JobContext, Middleware, current_job

app = App("mwapp", prefix=os.environ.get("JSQ_TEST_PREFIX", "mwapp"))


def note(what: str, detail: str = "") -> None:
    path = os.environ.get("JSQ_TEST_MW_LOG")
    if path:
        with Path(path).open("a") as f:
            f.write(f"{what} {os.getpid()} {detail}\n")


class Recorder(Middleware):
    def before_publish(self, envelope: Any, headers: dict[str, str]) -> None:
        headers["sent-by"] = str(os.getpid())

    async def around_job(self, job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        note("around", job.id)
        job.headers["tenant"] = "acme"
        return await call_next()

    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        note("sync", job.id)
        return call_next()

    async def on_worker_start(self, worker_id: str) -> None:
        note("worker-start", worker_id)

    async def on_worker_stop(self, worker_id: str) -> None:
        note("worker-stop", worker_id)

    def on_child_start(self) -> None:
        note("child-start")


class Broken(Middleware):
    """Fails everywhere: the jobs must go on."""

    def before_publish(self, envelope: Any, headers: dict[str, str]) -> None:
        raise RuntimeError("broken before_publish")

    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        raise RuntimeError("broken around_job_sync")

    def on_child_start(self) -> None:
        raise RuntimeError("broken on_child_start")


app.add_middleware(Recorder())
app.add_middleware(Broken())


@app.task
def where() -> dict[str, Any]:
    """The pid that ran the job and the headers it saw."""
    return {"pid": os.getpid(), "headers": current_job().headers}
