"""A worker's start rides out a JetStream that does not answer yet, within its budget."""

from __future__ import annotations

import pytest

from jsqueue.errors import InvalidError, TransientError
from jsqueue.worker import startup


async def test_a_transient_failure_is_undone_and_tried_again() -> None:
    calls: list[str] = []

    async def open_() -> None:
        calls.append("open")
        if calls.count("open") < 3:
            raise TransientError("NATS did not answer in time")

    async def undo() -> None:
        calls.append("undo")

    await startup.opened(open_, undo, 10.0, "w1")
    assert calls == ["open", "undo", "open", "undo", "open"]


async def test_past_the_budget_the_failure_stands() -> None:
    undone = 0

    async def open_() -> None:
        raise TransientError("NATS did not answer in time")

    async def undo() -> None:
        nonlocal undone
        undone += 1

    with pytest.raises(TransientError):
        await startup.opened(open_, undo, 0.7, "w1")
    assert 1 <= undone <= 2


async def test_a_permanent_failure_is_not_retried() -> None:
    async def open_() -> None:
        raise InvalidError("JetStream refused it")

    async def undo() -> None:
        raise AssertionError("nothing to undo for a failure that is not transient")

    with pytest.raises(InvalidError):
        await startup.opened(open_, undo, 10.0, "w1")
