"""Tasks for the fault suite: each records its start and finish in the ledger.

Prefix, ack_wait and the ledger directory come from the environment, so every scenario runs its
own worker processes against its own streams.
"""

from __future__ import annotations

import asyncio
import os
import time

from tenacity import stop_after_attempt, wait_fixed

from jsqueue import App, RetryPolicy, current_job
from jsqueue.testing.ledger import Ledger

app = App(
    "ledgered",
    prefix=os.environ.get("JSQ_TEST_PREFIX", "ledgered"),
    ack_wait=float(os.environ.get("JSQ_TEST_ACK_WAIT", "2")),
    max_deliver=int(os.environ.get("JSQ_TEST_MAX_DELIVER", "5")),
    replicas=int(os.environ.get("JSQ_TEST_REPLICAS", "1")),
    unknown_task_retries=2,
    unknown_task_delay=0.2,
)
ledger = Ledger(os.environ.get("JSQ_LEDGER_DIR", "/tmp/jsqueue-ledger"))


@app.task(ignore_result=True)
async def record(i: int) -> None:
    """The plain job: its finish is the side effect the ledger counts."""
    job_id = current_job().id
    ledger.started(job_id)
    ledger.finished(job_id)


@app.task
async def kept(i: int) -> int:
    """The plain job with a result to store: acked only once ``i`` is recorded."""
    job_id = current_job().id
    ledger.started(job_id)
    ledger.finished(job_id)
    return i


@app.task(ignore_result=True)
async def slow(i: int, seconds: float) -> None:
    job_id = current_job().id
    ledger.started(job_id)
    await asyncio.sleep(seconds)
    ledger.finished(job_id)


@app.task(ignore_result=True)
def slow_def(i: int, seconds: float) -> None:
    """The slow job as a def, for workers with --pool process: it runs in a pool child."""
    job_id = current_job().id
    ledger.started(job_id)
    time.sleep(seconds)
    ledger.finished(job_id)


@app.task
async def effect_then_wait(seconds: float) -> int:
    """The side effect first, then a wait on the first attempt: a kill in the wait hits between
    the side effect and the ack."""
    job = current_job()
    ledger.started(job.id)
    ledger.finished(job.id)
    if job.attempt == 1:
        await asyncio.sleep(seconds)
    return job.attempt


@app.task
async def long_job(seconds: float) -> str:
    """Runs ``seconds`` and returns which worker process finished it."""
    job = current_job()
    ledger.started(job.id)
    await asyncio.sleep(seconds)
    ledger.finished(job.id)
    return f"pid {os.getpid()} attempt {job.attempt}"


@app.task(retry=RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(0.4)))
async def always_fails() -> None:
    ledger.started(current_job().id)
    raise OSError("the disk is always full")


@app.task
def crash() -> None:
    ledger.started(current_job().id)
    os._exit(3)


@app.task
async def square(x: int) -> int:
    ledger.started(current_job().id)
    await asyncio.sleep(0.01)
    ledger.finished(current_job().id)
    return x * x


@app.task
def total(values: list[int]) -> int:
    """A chord callback: each run leaves a mark, so a doubled callback would show."""
    ledger.finished(f"callback-{current_job().id}")
    return sum(values)


@app.task(ignore_result=True)
def tick() -> None:
    """A periodic job: the ledger gets one finish per tick."""
    ledger.finished(current_job().id)


app.add_periodic(tick.s(), every=1, name="tick")


@app.task(ignore_result=True)
def blob(data: str) -> None:
    """Fails with a long message, to make a dead letter near max_payload."""
    ledger.started(current_job().id)
    raise ValueError("x" * 10_000)
