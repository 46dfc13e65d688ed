"""A FastAPI service that sends jobs: the jsqueue app connects in the lifespan, one route
enqueues (and waits for the result if asked), another reports on a job by id.

Run the web service and a worker (``pip install fastapi uvicorn``)::

    uvicorn examples.web:api
    jsqueue worker -A examples.web:queue

then ``curl -X POST 'localhost:8000/sums?wait=5' -H 'content-type: application/json'
-d '{"x": 2, "y": 3}'``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from jsqueue import App, ConfigError, ResultTimeout, TaskFailed

queue = App("web", prefix=os.environ.get("EXAMPLE_WEB_PREFIX", "web"))


@queue.task
async def add(x: int, y: int) -> int:
    return x + y


@queue.task
def divide(x: int, y: int) -> float:
    return x / y


@asynccontextmanager
async def lifespan(api: FastAPI) -> AsyncIterator[None]:
    await queue.connect(wait=10)  # the connection of this event loop, for every request
    try:
        yield
    finally:
        await queue.close()


api = FastAPI(lifespan=lifespan)


class Pair(BaseModel):
    x: int
    y: int


@api.post("/sums", status_code=202)
async def enqueue_sum(pair: Pair, wait: float = 0) -> dict[str, Any]:
    """Send ``add(x, y)``; with ``wait`` (seconds), wait that long for the result too."""
    job = await add.delay(pair.x, pair.y)
    if wait <= 0:
        return {"id": job.id}
    try:
        return {"id": job.id, "value": await job.get(timeout=wait)}
    except ResultTimeout:
        return {"id": job.id}  # still running: poll GET /jobs/{id}


@api.post("/quotients", status_code=202)
async def enqueue_quotient(pair: Pair) -> dict[str, Any]:
    return {"id": (await divide.delay(pair.x, pair.y)).id}


@api.get("/jobs/{job_id}")
async def job_status(job_id: str, wait: float = 0) -> dict[str, Any]:
    """A job's state, and its value or error once it has one (waiting up to ``wait``)."""
    try:
        job = queue.result(job_id)
    except ConfigError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    try:
        if wait > 0:
            return {"id": job_id, "state": "SUCCESS", "value": await job.get(timeout=wait)}
    except ResultTimeout:
        pass
    except TaskFailed as exc:
        return {"id": job_id, "state": "FAILURE", "error": str(exc)}
    return {"id": job_id, "state": (await job.state()).value}
