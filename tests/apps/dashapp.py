"""Tasks for the dashboard's browser tests, run by a real worker process. The prefix comes from
the environment; ``marks`` is a directory a task looks in, so a test decides when it succeeds."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tenacity import stop_after_attempt, wait_fixed

from jsqueue import App, RetryPolicy

app = App(
    "dashapp",
    prefix=os.environ.get("JSQ_TEST_PREFIX", "dashapp"),
    events=os.environ.get("JSQ_TEST_EVENTS") == "1",
)


@app.task(track_started=True)
async def nap(seconds: float) -> float:
    """Sleep, then return how long."""
    await asyncio.sleep(seconds)
    return seconds


@app.task(retry=RetryPolicy(stop=stop_after_attempt(1), wait=wait_fixed(0.1)))
def picky(marks: str) -> str:
    """Fail with markup in the message (dead-lettered at once) until ``marks/ok`` exists."""
    if not Path(marks, "ok").exists():
        raise ValueError("<script>window.pwned = true</script> not yet")
    Path(marks, "replayed").write_text("ran")
    return "ok"
