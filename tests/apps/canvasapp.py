"""Tasks for the nested-chord-under-SIGKILL test: members take a little time; every callback
leaves a mark per execution, so a doubled callback at any level would show."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from jsqueue import App

app = App(
    "canvas",
    prefix=os.environ.get("JSQ_TEST_PREFIX", "canvas"),
    ack_wait=float(os.environ.get("JSQ_TEST_ACK_WAIT", "1")),
    max_deliver=50,
)


@app.task
async def square(x: int) -> int:
    await asyncio.sleep(0.02)
    return x * x


@app.task
def subtotal(results: list[int], marks: str, part: int) -> int:
    """The callback of an inner chord: one line per execution in subtotal.log."""
    with open(Path(marks) / "subtotal.log", "a") as f:
        f.write(f"{part} {sum(results)}\n")
    return sum(results)


@app.task
def total(results: list[int], marks: str) -> int:
    with open(Path(marks) / "callback.log", "a") as f:
        f.write(f"{os.getpid()} {sum(results)}\n")
    return sum(results)
