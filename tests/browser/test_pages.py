"""The dashboard in a real browser (Debian's chromium under Playwright), against a real server,
a real worker process and the ``jsqueue dashboard`` command: live depth, pause and resume,
workers, revoke, dead letters replayed and purged, and a job's markup shown as text."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from jsqueue import App, JobState
from jsqueue.testing import Process, wait_state, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


async def api(url: str, path: str) -> Any:
    async with httpx.AsyncClient() as client:
        response = await client.get(url + path, timeout=10)
        response.raise_for_status()
        return response.json()


async def wait_letters(url: str, count: int) -> None:
    """Until the API lists ``count`` dead letters (a letter follows its job's FAILURE record)."""
    deadline = time.monotonic() + 20
    while len(await api(url, "/api/dlq")) != count:
        assert time.monotonic() < deadline, f"{count} dead letters expected"
        await asyncio.sleep(0.1)


async def test_overview_shows_depth_rise_and_fall_and_pause_holds_the_queue(
    dashapp: App, worker: Process, dashboard: Callable[..., Any], browser: Any, expect: Any
) -> None:
    from tests.apps.dashapp import nap

    board = await dashboard()
    page = await browser.new_page()
    await page.goto(board.url + "/")
    await page.evaluate("window.notReloaded = true")
    row = page.locator('#queues tr[data-queue="default"]')
    await expect(row.locator(".workers")).to_have_text("1", timeout=20_000)
    await expect(page.locator("#live")).to_have_class("live on")

    await row.locator("button.pause").click()
    await expect(row.locator(".state")).to_have_text("PAUSED", timeout=10_000)
    assert (await api(board.url, "/api/queues"))[0]["paused"] is True
    done_before = (await api(board.url, "/api/workers"))[0]["processed"]
    jobs = [await nap.delay(0.02) for _ in range(30)]
    await expect(row.locator(".ready")).to_have_text("30", timeout=15_000)
    await expect(page.locator("#total-ready")).to_have_text("30")
    await asyncio.sleep(2)  # a hold check: a paused queue's jobs stay where they are
    assert (await api(board.url, "/api/workers"))[0]["processed"] == done_before
    await expect(row.locator(".ready")).to_have_text("30")

    await row.locator("button.resume").click()
    await expect(row.locator(".state")).to_have_text("active", timeout=10_000)
    await expect(row.locator(".ready")).to_have_text("0", timeout=30_000)
    for job in jobs:
        await wait_state(job, JobState.SUCCESS, timeout=30)
    # the chart is drawn from the workers' counters, sampled each second (events are off)
    deadline = time.monotonic() + 15
    while not any(p["succeeded"] > 0 for p in (await api(board.url, "/api/overview"))["rates"]):
        assert time.monotonic() < deadline, "no succeeded rate sampled"
        await asyncio.sleep(0.5)
    points = await page.locator("polyline.succeeded").get_attribute("points")
    assert len((points or "").split()) >= 2
    assert await page.evaluate("window.notReloaded") is True  # all of it arrived live

    workers_page = await browser.new_page()
    await workers_page.goto(board.url + "/workers")
    worker_row = workers_page.locator("#workers tbody tr[data-worker]")
    await expect(worker_row).to_have_count(1, timeout=10_000)
    await expect(worker_row.locator("td").nth(2)).to_have_text("default")
    assert "MB" in (await worker_row.locator("td").nth(8).inner_text())
    worker.stop()  # a stopping worker removes its record: the row goes, live
    await expect(worker_row).to_have_count(0, timeout=15_000)
    await expect(workers_page.locator("#workers")).to_contain_text("no live workers")

    for _ in range(5):
        await nap.delay(0.01)
    await expect(row.locator(".ready")).to_have_text("5", timeout=15_000)
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    await row.locator("button.purge").click()
    assert [q["ready"] for q in await api(board.url, "/api/queues")] == [5]  # not confirmed
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await row.locator("button.purge").click()
    await expect(page.locator("#flash")).to_have_text("removed 5 job(s) from queue default")
    await expect(row.locator(".ready")).to_have_text("0", timeout=10_000)


async def test_revoke_and_terminate_from_a_running_jobs_page(
    dashapp: App, worker: Process, dashboard: Callable[..., Any], browser: Any, expect: Any
) -> None:
    from tests.apps.dashapp import nap

    board = await dashboard()
    job = await nap.delay(60)
    await wait_state(job, JobState.STARTED, timeout=20)
    page = await browser.new_page()
    await page.goto(board.url + "/jobs")
    await page.fill("#job-id", job.id)
    await page.click("text=Show")
    await expect(page.locator("#job-state")).to_have_text("STARTED")
    await expect(page.locator("#job-where")).to_contain_text("running on")
    await expect(page.locator("#job-args")).to_have_text("[60]")
    await page.click("#terminate")
    await expect(page.locator("#flash")).to_contain_text("revoked and terminated", timeout=10_000)
    await page.evaluate("window.notReloaded = true")
    await wait_state(job, JobState.REVOKED, timeout=20)
    # the page follows the job: REVOKED, and once it has stopped (the registry says so within
    # 2 s) no button is left
    await expect(page.locator("#job-state")).to_have_text("REVOKED")
    await expect(page.locator("#terminate, #revoke")).to_have_count(0)
    assert await page.evaluate("window.notReloaded") is True
    await page.reload()
    await expect(page.locator("#terminate, #revoke")).to_have_count(0)
    timeline = await page.locator("#timeline li").all_inner_texts()
    assert any("revoked" in line for line in timeline), timeline

    await page.goto(board.url + "/jobs/no-such-job")
    await expect(page.locator("#missing")).to_contain_text("not found")


async def test_dead_letters_show_markup_as_text_replay_with_progress_and_purge(
    dashapp: App,
    worker: Process,
    dashboard: Callable[..., Any],
    browser: Any,
    marks: Path,
    expect: Any,
) -> None:
    from tests.apps.dashapp import picky

    board = await dashboard()
    jobs = [await picky.delay(str(marks)) for _ in range(4)]
    for job in jobs:
        await wait_state(job, JobState.FAILURE, timeout=20)
    await wait_letters(board.url, 4)
    page = await browser.new_page()
    await page.goto(board.url + "/dlq")
    rows = page.locator("#letters tbody tr[data-job]")
    await expect(rows).to_have_count(4)
    await expect(rows.first.locator(".error")).to_contain_text(
        "ValueError: <script>window.pwned = true</script> not yet"
    )
    await page.goto(f"{board.url}/jobs/{jobs[0].id}")
    await expect(page.locator("#job-state")).to_have_text("FAILURE")
    await expect(page.locator("#job-where")).to_have_text("dead-lettered")
    await expect(page.locator("#job-error")).to_contain_text("<script>window.pwned")
    await expect(page.locator("#job-args")).to_have_text(f'["{marks}"]')
    assert await page.evaluate("window.pwned") is None  # shown, never run

    (marks / "ok").write_text("")
    await page.goto(board.url + "/dlq")
    await page.locator(f'tr[data-job="{jobs[0].id}"] button.replay-one').click()
    await expect(page.locator("#flash")).to_contain_text(f"replayed {jobs[0].id} as")
    await wait_until(lambda: (marks / "replayed").exists(), 20, "the replayed job to run")
    await expect(rows).to_have_count(3)

    await page.click("#replay-all")
    await expect(page.locator("#replay-status")).to_have_text("replayed 3 of 3", timeout=20_000)
    assert await page.locator("#replay-progress").get_attribute("max") == "3"
    assert await api(board.url, "/api/dlq") == []

    (marks / "ok").unlink()
    dead = await picky.delay(str(marks))
    await wait_state(dead, JobState.FAILURE, timeout=20)
    await wait_letters(board.url, 1)
    await page.goto(board.url + "/dlq")
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
    await page.click("#purge-letters")
    await expect(rows).to_have_count(1)
    assert len(await api(board.url, "/api/dlq")) == 1  # dismissed: nothing removed
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.click("#purge-letters")
    await expect(page.locator("#flash")).to_have_text("removed 1 dead letter(s)")
    assert await api(board.url, "/api/dlq") == []
