"""Delayed jobs wait on the server (message schedules), expiry, and revoke."""

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from jsqueue import App, ConfigError, JobState, TaskFailed, current_job
from jsqueue.services.status import queue_status
from jsqueue.testing import Process, burst, running_worker
from jsqueue.wire.server import NatsServer

ROOT = Path(__file__).resolve().parents[2]


async def test_countdowns_run_on_time_never_early(jsq_app: App) -> None:
    lateness: list[float] = []
    all_done = asyncio.Event()

    @jsq_app.task(ignore_result=True)
    async def due() -> None:
        eta = current_job().eta
        assert eta is not None
        lateness.append(time.time() - eta)
        if len(lateness) == 200:
            all_done.set()

    async with jsq_app, running_worker(jsq_app, concurrency=64):
        for i in range(200):
            await due.apply_async(countdown=0.5 + 4.5 * i / 199)  # spread over 5 s
        status = {q.queue: q for q in await queue_status(jsq_app)}
        assert status["default"].scheduled > 100  # waiting on the server, not in the worker
        await asyncio.wait_for(all_done.wait(), 20)
    lateness.sort()
    assert lateness[0] >= 0, f"a job ran {-lateness[0] * 1000:.1f} ms early"
    p50, p99 = lateness[100], lateness[197]
    assert p99 < 1.0
    print(f"countdown lateness over 200 jobs: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")


async def test_aware_eta_and_naive_eta(jsq_app: App) -> None:
    @jsq_app.task
    async def at() -> float:
        return time.time()

    async with jsq_app, running_worker(jsq_app):
        when = datetime.now(UTC) + timedelta(seconds=0.7)
        job = await at.apply_async(eta=when)
        assert await job.get(timeout=10) >= when.timestamp()
        with pytest.raises(ConfigError, match="eta must be timezone-aware"):
            await at.apply_async(eta=datetime.now() + timedelta(seconds=5))
        with pytest.raises(ConfigError, match="give countdown= or eta=, not both"):
            await at.apply_async(countdown=1, eta=when)


async def test_delayed_job_keeps_its_id_and_is_deduplicated(jsq_app: App) -> None:
    @jsq_app.task
    async def remind(who: str) -> str:
        return f"{who} reminded as {current_job().id}"

    async with jsq_app:
        first = await remind.apply_async(args=("ann",), countdown=0.5, job_id="remind-ann")
        again = await remind.apply_async(args=("ann",), countdown=0.5, job_id="remind-ann")
        assert first.id == again.id == "remind-ann"
        [q] = await queue_status(jsq_app)
        assert q.scheduled == 1
        async with running_worker(jsq_app):
            assert await first.get(timeout=10) == "ann reminded as remind-ann"


async def test_expired_job_is_not_run(jsq_app: App) -> None:
    ran = []

    @jsq_app.task
    async def stale() -> None:
        ran.append(1)

    async with jsq_app:
        soon = await stale.apply_async(expires=datetime.now(UTC) + timedelta(seconds=0.1))
        later = await stale.apply_async(countdown=0.4, expires=0.2)  # expires before it fires
        await asyncio.sleep(0.5)  # both expiries pass before a worker exists: the point of it
        await burst(jsq_app)
        assert await soon.state() is JobState.EXPIRED
        assert await later.state() is JobState.EXPIRED
        with pytest.raises(TaskFailed) as info:
            await soon.get(timeout=1)
        assert info.value.state == "EXPIRED"
    assert ran == []


async def test_revoke_a_queued_job(jsq_app: App) -> None:
    ran = []

    @jsq_app.task
    async def work(x: int) -> int:
        ran.append(x)
        return x

    async with jsq_app:
        doomed = await work.delay(1)
        kept = await work.delay(2)
        assert await doomed.revoke() is True
        await burst(jsq_app)
        assert await doomed.state() is JobState.REVOKED
        assert await kept.get(timeout=5) == 2
    assert ran == [2]


async def test_revoke_a_delayed_job_removes_its_schedule(jsq_app: App) -> None:
    ran = []

    @jsq_app.task
    async def later() -> None:
        ran.append(1)

    async with jsq_app:
        job = await later.apply_async(countdown=0.5)
        [before] = await queue_status(jsq_app)
        assert before.scheduled == 1
        assert await job.revoke() is True
        assert sum(q.scheduled for q in await queue_status(jsq_app)) == 0
        await asyncio.sleep(0.7)  # past its due time: it must not have fired
        await burst(jsq_app)
        assert await job.state() is JobState.REVOKED
    assert ran == []


def test_revoke_sync_and_revoking_a_finished_job_changes_nothing(jsq_app: App) -> None:
    @jsq_app.task
    def done() -> str:
        return "finished"

    job = done.delay_sync()

    async def run() -> None:
        async with jsq_app:
            await burst(jsq_app)

    asyncio.run(run())
    assert job.revoke_sync() is False
    assert job.get_sync(timeout=5) == "finished"


@pytest.mark.slow
async def test_fifty_thousand_scheduled_jobs_leave_worker_memory_flat(
    tmp_path: Path, jsq_prefix: str
) -> None:
    server = NatsServer(store_dir=tmp_path / "store").start()
    try:
        env = {"JSQ_TEST_PREFIX": jsq_prefix}
        worker = Process.jsqueue(
            "worker",
            "-A",
            "tests.apps.faulty:app",
            "--url",
            server.url,
            env=env,
            cwd=ROOT,
            log_dir=tmp_path,
            name="worker",
        )
        os.environ["JSQ_TEST_PREFIX"] = jsq_prefix
        import importlib

        import tests.apps.faulty as module

        app = importlib.reload(module).app
        app.configure(url=server.url)
        quick = app.tasks["tests.apps.faulty.quick"]
        with worker:
            async with app:
                await quick.delay(0)  # the worker is up and has run a job
                await asyncio.sleep(1.0)  # let its memory settle before the first reading
                before = psutil.Process(worker.pid).memory_info().rss
                eta = datetime.now(UTC) + timedelta(hours=1)
                broker = await app.broker()
                from jsqueue.services.producer import build_envelope, send_many

                for start in range(0, 50_000, 5_000):
                    envs = [
                        build_envelope(
                            app.settings,
                            quick.name,
                            (i,),
                            queue="default",
                            serializer="json",
                            eta=eta,
                        )
                        for i in range(start, start + 5_000)
                    ]
                    await send_many(broker, envs)
                await asyncio.sleep(1.0)
                after = psutil.Process(worker.pid).memory_info().rss
            out = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "jsqueue",
                    "status",
                    "-A",
                    "tests.apps.faulty:app",
                    "--url",
                    server.url,
                    "--json",
                ],
                env={**os.environ, **env},
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
        status = json.loads(out.stdout)["queues"]
        default = next(q for q in status if q["queue"] == "default")
        assert default["scheduled"] == 50_000
        assert default["ready"] == 0
        assert after - before < 5 * 1024 * 1024
        mb = 2**20
        print(f"worker RSS, 50,000 scheduled: {before / mb:.1f} MB before, {after / mb:.1f} after")
    finally:
        os.environ.pop("JSQ_TEST_PREFIX", None)
        server.cleanup()
