"""The app the property test throws generated messages at: a worker process of it must settle
every one of them. Its prefix comes from the environment; its settings are short, so that a
message that would loop shows within the test."""

from __future__ import annotations

import os

from tenacity import stop_after_attempt, wait_fixed

from jsqueue import App, RetryPolicy

app = App(
    "hostile",
    prefix=os.environ.get("JSQ_TEST_PREFIX", "hostile"),
    ack_wait=2,
    max_deliver=3,
    unknown_task_retries=2,
    unknown_task_delay=0.1,
)


@app.task(name="add")
async def add(x: object, y: object) -> object:
    return x + y  # type: ignore[operator]


@app.task(name="fails")
def fails(*args: object, **kwargs: object) -> None:
    raise ValueError(f"fails with {len(args)} args")


@app.task(name="flaky", retry=RetryPolicy(stop=stop_after_attempt(2), wait=wait_fixed(0.1)))
async def flaky(*args: object, **kwargs: object) -> None:
    raise OSError("flaky")
