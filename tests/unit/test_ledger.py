"""The ledger finds what the fault suite looks for: lost, unexpected and duplicated jobs."""

from pathlib import Path

from jsqueue.errors import PublishError
from jsqueue.testing.ledger import Ledger


async def stored() -> str:
    return "ok"


async def refused() -> str:
    raise PublishError("NATS refused the publish to jsq.q.default: no space")


async def unanswered() -> str:
    raise PublishError("... did not confirm the publish; the job may or may not be stored")


async def test_the_ledger_reports_lost_unexpected_and_duplicated_jobs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    for job in ("done", "twice", "dead", "lost"):
        assert await ledger.enqueue(job, stored()) == "ok"
    assert await ledger.enqueue("refused", refused()) is None
    assert await ledger.enqueue("maybe", unanswered()) is None
    for job in ("done", "twice", "twice", "ghost", "maybe"):
        ledger.started(job)
        ledger.finished(job)

    found = ledger.check(dead_lettered=["dead", "phantom"])

    assert not found.ok
    assert found.lost == {"lost"}  # acked, never finished nor dead-lettered
    assert found.unexpected == {"ghost", "phantom"}  # ran or dead-lettered, never enqueued
    assert found.duplicates == {"twice": 2}
    assert (found.attempted, found.acked, found.errors, found.unknown) == (6, 4, 1, 1)
    assert (found.finished, found.dead_lettered) == (4, 2)
    assert "lost 1, unexpected 2, duplicated 1" in found.summary()
    assert len(ledger.times("started")["twice"]) == 2


async def test_a_clean_run_is_ok(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    await ledger.enqueue("a", stored())
    ledger.finished("a")
    assert ledger.check().ok
