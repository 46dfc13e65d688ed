"""The reference jsqueue service: a few tasks a real app would have.

Run it with ``jsqueue worker -A worker.app:app`` (the Procfile does). The NATS URL comes from
``$JSQUEUE_URL`` (the Procfile's ``.env`` sets it), so the same code runs anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta

from tenacity import retry_if_exception_type, stop_after_attempt, wait_exponential

from jsqueue import App, RetryPolicy, current_job

log = logging.getLogger("worker.app")

app = App("reference")


@app.task
async def add(x: int, y: int) -> int:
    """Add two numbers (a coroutine: runs on the worker's event loop)."""
    return x + y


@app.task
def resize_image(name: str, width: int) -> str:
    """A blocking function: runs in the worker's thread pool."""
    return f"{name}@{width}px"


@app.task(
    retry=RetryPolicy(
        stop=stop_after_attempt(4),
        wait=wait_exponential(multiplier=0.5, max=5),
        retry=retry_if_exception_type(ConnectionError),
    )
)
async def send_welcome_email(to: str) -> str:
    """Talks to a flaky mail server: fails now and then and is retried with backoff."""
    job = current_job()
    await asyncio.sleep(0.01)
    if random.random() < 0.3:
        raise ConnectionError(f"mail server did not answer (attempt {job.attempt})")
    return f"sent to {to}"


@app.task
async def mul(x: int, y: int) -> int:
    """Multiply (a chain step)."""
    return x * y


@app.task
async def tsum(values: list[int]) -> int:
    """Sum a chord's results."""
    return sum(values)


@app.periodic_task(every=timedelta(seconds=10), name="report")
async def report() -> str:
    """A periodic job: `jsqueue beat` sends it every 10 s, exactly once however many beats run."""
    job = current_job()
    log.info("periodic report %s", job.id)
    return job.id
