"""Workers with ``--pool process``: real children that spin, crash, hog memory and get recycled,
and a parent whose death takes every child with it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from jsqueue import App, TaskFailed
from jsqueue.services import dlq as dead_letters
from jsqueue.services.status import workers
from jsqueue.testing import wait_until

from .support import jsqueue, starts
from .support import procapp_worker as worker

pytestmark = pytest.mark.slow


def task(app: App, name: str) -> object:
    return app.tasks[f"tests.apps.procapp.{name}"]


async def test_a_spinning_task_is_killed_at_its_limit_and_a_fresh_child_follows(
    procapp: App, tmp_path: Path
) -> None:
    spin, whoami = task(procapp, "spin"), task(procapp, "whoami")
    async with procapp:
        spinning = await spin.delay(str(tmp_path))  # type: ignore[attr-defined]
        after = await whoami.apply_async(queue="limits")  # type: ignore[attr-defined]
        with worker(procapp, tmp_path, "--pool", "process", "-c", "1", "-Q", "limits"):
            with pytest.raises(TaskFailed, match="TimeLimitExceeded") as failed:
                await spinning.get(timeout=30)
            next_pid = await after.get(timeout=30)
        info = await spinning.info()
    [(spin_pid, at, _)] = starts(tmp_path, spinning.id)
    assert info["finished"] - at < 1 + 1  # killed within its limit plus a second
    assert "time_limit of 1" in failed.value.remote_message
    assert next_pid != spin_pid


async def test_the_worker_wide_time_limit_kills_a_child_too(procapp: App, tmp_path: Path) -> None:
    spin = task(procapp, "spin_forever")  # sets no limit of its own
    async with procapp:
        spinning = await spin.delay(str(tmp_path))  # type: ignore[attr-defined]
        args = ("--pool", "process", "-c", "1", "--time-limit", "1")
        with (
            worker(procapp, tmp_path, *args),
            pytest.raises(TaskFailed, match="TimeLimitExceeded") as failed,
        ):
            await spinning.get(timeout=30)
    assert "time_limit of 1" in failed.value.remote_message


async def test_children_are_recycled_after_n_tasks_and_above_a_memory_limit(
    procapp: App, tmp_path: Path
) -> None:
    whoami, hog = task(procapp, "whoami"), task(procapp, "hog")
    async with procapp:
        seven = [await whoami.delay() for _ in range(7)]  # type: ignore[attr-defined]
        with worker(
            procapp, tmp_path, "--pool", "process", "-c", "1", "--max-tasks-per-child", "3"
        ):
            pids = [await job.get(timeout=30) for job in seven]
        hogging = await hog.delay()  # type: ignore[attr-defined]
        after = await whoami.delay()  # type: ignore[attr-defined]
        args = ("--pool", "process", "-c", "1", "--max-memory-per-child", "150")
        with worker(procapp, tmp_path, *args) as proc:
            hog_pid, next_pid = await hogging.get(timeout=30), await after.get(timeout=30)
            output = proc.output()
    assert len(set(pids)) >= 3
    assert [pids.count(p) for p in dict.fromkeys(pids)][:2] == [3, 3]
    assert hog_pid != next_pid  # the hog's child retired after its job
    assert "retires at" in output


async def test_a_crashing_child_fails_only_its_own_job(procapp: App, tmp_path: Path) -> None:
    exits, segfault, work = task(procapp, "exits"), task(procapp, "segfault"), task(procapp, "work")
    async with procapp:
        crashing = [await exits.delay(), await segfault.delay()]  # type: ignore[attr-defined]
        others = await work.map(range(100))  # type: ignore[attr-defined]
        with worker(procapp, tmp_path, "--pool", "process", "-c", "2") as proc:
            results = [await job.get(timeout=60) for job in others]
            errors = []
            for job in crashing:
                with pytest.raises(TaskFailed) as failed:
                    await job.get(timeout=30)
                errors.append(failed.value)
            letters = await dead_letters.list_letters(await procapp.broker())
            assert proc.proc is not None
            alive = proc.proc.poll() is None
    assert results == list(range(100))
    assert alive  # the worker never exits because of a child
    assert [e.remote_type for e in errors] == ["ChildDied", "ChildDied"]
    assert "exited with code 1" in errors[0].remote_message
    assert "SIGSEGV" in errors[1].remote_message
    by_id = {x.job_id: x for x in letters}
    assert {job.id for job in crashing} == set(by_id)  # only they, after their retries
    assert all(x.attempts == 2 and x.reason == "retries_exhausted" for x in letters)


async def test_no_child_outlives_a_sigkilled_worker(procapp: App, tmp_path: Path) -> None:
    spin = task(procapp, "spin_forever")
    async with procapp:
        jobs = [await spin.delay(str(tmp_path)) for _ in range(2)]  # type: ignore[attr-defined]
        with worker(procapp, tmp_path, "--pool", "process", "-c", "2") as proc:
            await wait_until(
                lambda: all((tmp_path / f"{j.id}.start").exists() for j in jobs), 30, "spinning"
            )
            children = psutil.Process(proc.pid).children(recursive=True)
            spinning = {starts(tmp_path, j.id)[0][0] for j in jobs}
            assert spinning <= {c.pid for c in children}
            os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: not any(map(_alive, children)), 5, "no child alive")
            left = [c.pid for c in children if _alive(c)]
    assert left == []


def _alive(child: psutil.Process) -> bool:
    try:
        return child.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_soft_limits_are_caught_in_a_child_and_on_the_loop(
    procapp: App, tmp_path: Path
) -> None:
    in_child, on_loop = task(procapp, "soft_cleanup"), task(procapp, "async_soft_cleanup")
    ignoring = task(procapp, "soft_ignored")
    async with procapp:
        a = await in_child.delay(str(tmp_path))  # type: ignore[attr-defined]
        b = await on_loop.delay(str(tmp_path))  # type: ignore[attr-defined]
        c = await ignoring.delay(str(tmp_path))  # type: ignore[attr-defined]
        with worker(procapp, tmp_path, "--pool", "process", "-c", "2", "-Q", "limits,default"):
            assert await a.get(timeout=30) == "cleaned up"
            assert await b.get(timeout=30) == "cleaned up"
            with pytest.raises(TaskFailed, match="TimeLimitExceeded"):
                await c.get(timeout=30)
    for job in (a, b):
        assert (tmp_path / f"{job.id}.cleanup").exists()
    assert (tmp_path / f"{c.id}.ignored").exists()  # it saw the soft limit, and went on


async def test_revoke_terminate_stops_a_running_def_job_and_an_async_job(
    procapp: App, tmp_path: Path
) -> None:
    long_def, long_async = task(procapp, "long_def"), task(procapp, "long_async")
    whoami = task(procapp, "whoami")
    async with procapp:
        a = await long_def.delay(str(tmp_path))  # type: ignore[attr-defined]
        b = await long_async.delay(str(tmp_path))  # type: ignore[attr-defined]
        with worker(procapp, tmp_path, "--pool", "process", "-c", "2") as proc:
            await wait_until(
                lambda: all((tmp_path / f"{j.id}.start").exists() for j in (a, b)), 30, "starts"
            )
            child = starts(tmp_path, a.id)[0][0]
            await _until_running(procapp, {a.id, b.id})
            stopped = time.monotonic()
            assert await a.revoke(terminate=True)
            out = jsqueue_cli(procapp, "revoke", b.id, "--terminate")
            assert out.returncode == 0, out.stderr
            assert "terminated" in out.stdout
            await _until_running(procapp, set())
            took = time.monotonic() - stopped
            after = await whoami.delay()  # type: ignore[attr-defined]
            next_pid = await after.get(timeout=20)
            output = proc.output()
        states = [await a.state(), await b.state()]
    assert took < 3
    assert [str(s) for s in states] == ["REVOKED", "REVOKED"]
    assert not any((tmp_path / f"{j.id}.end").exists() for j in (a, b))
    assert next_pid != child  # the next job gets a fresh child
    assert output.count("was revoked with terminate") == 2
    again = jsqueue_cli(procapp, "revoke", a.id)
    assert again.returncode == 1
    assert "already finished (REVOKED); nothing changed" in again.stderr
    unknown = jsqueue_cli(procapp, "revoke", "no-such-job")
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


async def test_a_thread_cannot_be_terminated_and_inspect_shows_the_pool(
    procapp: App, tmp_path: Path
) -> None:
    long_def, reporting = task(procapp, "long_def"), task(procapp, "reports_then_waits")
    async with procapp:
        a = await long_def.delay(str(tmp_path))  # type: ignore[attr-defined]
        args = ("-c", "2", "--time-limit", "0.5")
        with worker(procapp, tmp_path, *args, name="threads", ack_wait=1) as threads:
            await _until_running(procapp, {a.id})
            await wait_until(lambda: "past the time limit" in threads.output(), 10, "stuck")
            stuck = [j for r in await workers(procapp) for j in r["running"]]
            out = jsqueue_cli(procapp, "revoke", a.id, "--terminate")
            listed = jsqueue_cli(procapp, "inspect", "workers")
        assert out.returncode == 0, out.stderr
        assert "cannot be stopped" in out.stdout
        assert [j["stuck"] for j in stuck] == [True]
        assert "(stuck past its time limit)" in listed.stdout
        b = await reporting.delay(str(tmp_path))  # type: ignore[attr-defined]
        with worker(procapp, tmp_path, "--pool", "process", "-c", "2", name="procs"):
            await wait_until(lambda: (tmp_path / f"{b.id}.reported").exists(), 30, "a report")
            record = await _until_reported(procapp, b.id)
            table = jsqueue_cli(procapp, "inspect", "workers")
    assert record["pool"] == "process"
    assert len(record["children"]) == 2
    child = next(c for c in record["children"] if c["job"] == b.id)
    assert child["rss_mb"] is None or child["rss_mb"] > 1
    running = next(j for j in record["running"] if j["id"] == b.id)
    assert running["where"] == "process"
    assert running["reported"]["stage"] == {"step": 2, "of": 3}
    assert "POOL" in table.stdout
    assert "process" in table.stdout
    assert f"child {child['pid']}: {b.id}" in table.stdout


async def test_progress_from_a_child_is_seen_mid_job_by_inspect_job(
    procapp: App, tmp_path: Path
) -> None:
    """A child reports 20,000 times in a burst: a handful of records and events result, and
    the last report is there while the job still runs."""
    steps = 20_000
    progresses = task(procapp, "progresses")
    seen: list[dict[str, object]] = []

    async def on_event(subject: str, data: bytes) -> None:
        seen.append(json.loads(data))

    async with procapp:
        broker = await procapp.broker()
        unsubscribe = await broker.subscribe_core(f"{procapp.settings.events_subject}.>", on_event)
        job = await progresses.delay(str(tmp_path), steps)  # type: ignore[attr-defined]
        began = time.monotonic()
        with worker(procapp, tmp_path, "--pool", "process", "-c", "1", "--events", name="procs"):
            await wait_until(lambda: (tmp_path / f"{job.id}.reported").exists(), 30, "the burst")
            deadline = time.monotonic() + 10
            while (now := await job.progress()) is None or now.done < steps:
                assert time.monotonic() < deadline, f"progress: {now}"
                await asyncio.sleep(0.05)
            inspected = jsqueue_cli(procapp, "inspect", "job", job.id)
            (tmp_path / f"{job.id}.go").touch()
            assert await job.get(timeout=20) == steps
            elapsed = time.monotonic() - began
        await unsubscribe()
    assert inspected.returncode == 0, inspected.stderr
    shown = json.loads(inspected.stdout)
    assert shown["where"] == "running"
    assert shown["progress"]["done"] == steps
    assert shown["progress"]["info"] == {"stage": "child"}
    reports = [e for e in seen if e.get("kind") == "progress" and e.get("job_id") == job.id]
    assert 1 <= len(reports) <= elapsed + 2, (len(reports), elapsed)
    assert reports[-1]["progress"]["done"] == steps  # type: ignore[index]
    print(f"{steps} reports from a child: {len(reports)} progress events in {elapsed:.1f}s")


def jsqueue_cli(app: App, *args: str) -> subprocess.CompletedProcess[str]:
    return jsqueue(app.settings.prefix, str(app.settings.url), *args)  # the faulty app's CLI


async def _until_running(app: App, ids: set[str], timeout: float = 20) -> None:
    """Until the worker registry shows exactly ``ids`` running (it beats every 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        now = {j["id"] for r in await workers(app) for j in r["running"]}
        if now == ids:
            return
        assert time.monotonic() < deadline, f"running {now}, not {ids}"
        await asyncio.sleep(0.1)


async def _until_reported(app: App, job_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 20
    while True:
        for record in await workers(app):
            for job in record["running"]:
                if job["id"] == job_id and job.get("reported"):
                    return record
        assert time.monotonic() < deadline, "no report in the registry"
        await asyncio.sleep(0.1)


async def test_stop_signals_give_back_what_runs_in_children(procapp: App, tmp_path: Path) -> None:
    """First signal: the child's job may finish within --grace, then it is given back at once
    and the children stop; second signal: the children are killed and the job given back."""
    long_def = task(procapp, "long_def")
    async with procapp:
        job = await long_def.delay(str(tmp_path))  # type: ignore[attr-defined]
        args = ("--pool", "process", "-c", "1", "--grace", "0.5")
        with worker(procapp, tmp_path, *args, name="first") as first:
            await wait_until(lambda: len(starts(tmp_path, job.id)) == 1, 30, "a first start")
            children = psutil.Process(first.pid).children(recursive=True)
            first.signal(signal.SIGTERM)
            assert await asyncio.to_thread(first.wait, 10) == 0
            stopped = time.time()
        with worker(procapp, tmp_path, *args, name="second") as second:
            await wait_until(lambda: len(starts(tmp_path, job.id)) == 2, 30, "a second start")
            again = starts(tmp_path, job.id)[1][1]
            more = psutil.Process(second.pid).children(recursive=True)
            second.signal(signal.SIGTERM)
            await wait_until(lambda: "stopping gracefully" in second.output(), 10, "the first")
            second.signal(signal.SIGTERM)
            code = await asyncio.to_thread(second.wait, 10)
            killed = time.time()
        with worker(procapp, tmp_path, *args, name="third"):
            await wait_until(lambda: len(starts(tmp_path, job.id)) == 3, 30, "a third start")
            third = starts(tmp_path, job.id)[2]
            await job.revoke(terminate=True)
    assert again - stopped < 3  # given back at once, not after ack_wait (5 s)
    assert code == 128 + signal.SIGTERM
    assert third[1] - killed < 3
    assert third[2] == 3  # each give-back is a delivery
    left = [c.pid for c in [*children, *more] if _alive(c)]
    assert left == []


async def test_a_busy_child_is_handed_its_next_job_which_a_revoke_stops_before_it_runs(
    procapp: App, tmp_path: Path
) -> None:
    gated = task(procapp, "gated")
    async with procapp:
        first = await gated.delay(str(tmp_path))  # type: ignore[attr-defined]
        second = await gated.delay(str(tmp_path))  # type: ignore[attr-defined]
        third = await gated.delay(str(tmp_path))  # type: ignore[attr-defined]
        # "limits" carries only def tasks: the one child is handed its next job while it runs
        with worker(procapp, tmp_path, "--pool", "process", "-c", "1", "-Q", "limits") as proc:
            await wait_until(lambda: (tmp_path / f"{first.id}.start").exists(), 30, "a start")
            deadline = time.monotonic() + 10
            while True:  # the registry beats every 2 s: wait for one that shows all three
                [record] = await workers(procapp)
                running = [job["id"] for job in record["running"]]
                if running == [first.id] and record["held"] == {"limits": 2}:
                    break
                assert time.monotonic() < deadline, f"the registry showed {record}"
                await asyncio.sleep(0.1)
            # the second waits in the child's socket; the third in the worker (its prefetch)
            out = jsqueue_cli(procapp, "revoke", second.id, "--terminate")
            assert out.returncode == 0, out.stderr
            await wait_until(lambda: "was revoked with terminate" in proc.output(), 10, "revoked")
            assert not (tmp_path / f"{first.id}.end").exists()
            (tmp_path / "go").touch()
            pids = [await first.get(timeout=20), await third.get(timeout=20)]
        state = await second.state()
    assert str(state) == "REVOKED"
    assert not (tmp_path / f"{second.id}.start").exists()  # it never ran
    assert len(starts(tmp_path, first.id)) == len(starts(tmp_path, third.id)) == 1
    assert pids[0] != pids[1]  # the child was killed as it would have started the revoked one
