"""Workers as real processes: SIGKILL, SIGTERM drain, crash loops, server restarts, the CLI."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jsqueue import App
from jsqueue.services import dlq as dead_letters
from jsqueue.testing import destroy, wait_until
from jsqueue.wire.server import NatsServer

from .support import ROOT, worker_process

pytestmark = pytest.mark.slow


async def test_sigkill_mid_job_is_redelivered_and_completed(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    slow = faulty.tasks["tests.apps.faulty.slow"]
    async with faulty:
        job = await slow.delay(0.5, str(tmp_path))
        with worker_process(nats_server.url, jsq_prefix, tmp_path) as first:
            await wait_until(
                lambda: (tmp_path / f"{job.id}.start").exists(), 20, "the job to start"
            )
            first.kill()
            killed_at = time.time()
        with worker_process(nats_server.url, jsq_prefix, tmp_path) as second:
            assert await job.get(timeout=20) == job.id
            second.stop()
    starts = (tmp_path / f"{job.id}.start").read_text().split("\n")[:-1]
    assert [line.split()[0] for line in starts] == ["1", "2"]
    back_after = float(starts[1].split()[2]) - killed_at
    assert back_after < faulty.settings.ack_wait + 2
    print(f"SIGKILLed job came back after {back_after:.2f}s (ack_wait {faulty.settings.ack_wait}s)")


@pytest.mark.parametrize("first_signal", [signal.SIGTERM, signal.SIGINT])
async def test_sigterm_drains_running_jobs_and_exits_zero(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path, first_signal: int
) -> None:
    slow = faulty.tasks["tests.apps.faulty.slow"]
    async with faulty:
        job = await slow.delay(1.0, str(tmp_path))
        with worker_process(nats_server.url, jsq_prefix, tmp_path, "--grace", "10") as worker:
            await wait_until(
                lambda: (tmp_path / f"{job.id}.start").exists(), 20, "the job to start"
            )
            worker.signal(first_signal)
            assert await asyncio.to_thread(worker.wait, 20) == 0
        assert (tmp_path / f"{job.id}.end").exists()
        assert await job.get(timeout=5) == job.id
    assert "stopping gracefully" in worker.output()


async def test_grace_expiry_gives_the_job_back_at_once(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    slow = faulty.tasks["tests.apps.faulty.slow"]
    env = {"JSQ_TEST_ACK_WAIT": "10"}  # a redelivery by timeout would take 10 s
    async with faulty:
        job = await slow.delay(3.0, str(tmp_path))
        args = ("--grace", "0.2")
        with worker_process(nats_server.url, jsq_prefix, tmp_path, *args, **env) as worker:
            await wait_until(
                lambda: (tmp_path / f"{job.id}.start").exists(), 20, "the job to start"
            )
            worker.signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 20) == 0
            given_back = time.time()
        with worker_process(nats_server.url, jsq_prefix, tmp_path, **env):
            assert await job.get(timeout=20) == job.id
    starts = (tmp_path / f"{job.id}.start").read_text().splitlines()
    assert [line.split()[0] for line in starts] == ["1", "2"]
    assert float(starts[1].split()[2]) - given_back < 3  # at once, not after ack_wait


async def test_a_job_that_kills_its_worker_is_blamed_alone(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    """The jobs in flight beside it come back with it; each of them runs alone, so the crashes
    after the first are the culprit's alone, and only it is dead-lettered. (The jobs held while
    it runs alone are delivered again at each crash: max_deliver leaves room for that.)"""
    crash = faulty.tasks["tests.apps.faulty.crash"]
    slow = faulty.tasks["tests.apps.faulty.slow"]
    quick = faulty.tasks["tests.apps.faulty.quick"]
    env = {"JSQ_TEST_ACK_WAIT": "0.5", "JSQ_TEST_MAX_DELIVER": "6"}
    async with faulty:
        beside = [await slow.delay(0.5, str(tmp_path)) for _ in range(4)]
        job = await crash.delay()
        broker = await faulty.broker()
        exits = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if await dead_letters.list_letters(broker):
                break
            with worker_process(nats_server.url, jsq_prefix, tmp_path, "--burst", **env) as w:
                exits.append(await asyncio.to_thread(w.wait, 30))
        letters = await dead_letters.list_letters(broker)
        await quick.delay(1)
        with worker_process(nats_server.url, jsq_prefix, tmp_path, "--burst", **env) as w:
            assert await asyncio.to_thread(w.wait, 30) == 0
            log = w.output()
        counts = await broker.streams.subject_counts(faulty.settings.jobs_stream, "*.q.>")
        results = [await b.get(timeout=10) for b in beside]
    assert exits.count(3) == 4  # once beside the others, then three times alone: blamed
    assert [(x.job_id, x.reason, x.error_type) for x in letters] == [
        (job.id, "crash_loop", "WorkerLost")
    ]
    assert "a worker died each of the 3 times the job ran alone there" in letters[0].error_message
    assert results == [b.id for b in beside]  # the innocent finished, none dead-lettered
    assert counts == {}  # gone from the jobs stream
    assert "runs alone" in log or exits.count(0) >= 1


async def test_server_restart_mid_run_loses_no_acked_job(
    tmp_path: Path, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JSQ_TEST_PREFIX", jsq_prefix)
    import importlib

    import tests.apps.faulty as module

    app = importlib.reload(module).app
    server = NatsServer(store_dir=tmp_path / "store").start()
    app.configure(url=server.url)
    marks = tmp_path / "marks"
    marks.mkdir()
    try:
        async with app:
            jobs = await app.tasks["tests.apps.faulty.slow"].starmap([(0.01, str(marks))] * 300)
        with worker_process(server.url, jsq_prefix, tmp_path, "-c", "4") as worker:
            await wait_until(lambda: len(list(marks.glob("*.end"))) >= 40, 30, "40 jobs done")
            await asyncio.to_thread(server.restart)
            async with app:
                outcomes = [await job.get(timeout=30) for job in jobs]
            worker.stop()
        assert outcomes == [job.id for job in jobs]
        output = worker.output()
        assert output.count("disconnected from NATS") == 1  # each outage logged once ...
        assert output.count("reconnected to NATS") == 1  # ... not in a tight loop
    finally:
        await app.close()
        server.cleanup()


def test_cli_help_is_complete() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jsqueue", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("worker", "server", "dlq"):
        assert command in out
    worker_help = subprocess.run(
        [sys.executable, "-m", "jsqueue", "worker", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--app",
        "--queues",
        "--concurrency",
        "--url",
        "--burst",
        "--grace",
        "--log-level",
    ):
        assert option in worker_help


def test_cli_without_app_or_with_a_bad_one_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JSQUEUE_APP"}
    no_app = subprocess.run(
        [sys.executable, "-m", "jsqueue", "worker"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert no_app.returncode == 2
    assert "pass -A module:app" in no_app.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "jsqueue", "worker", "-A", "nosuchmodule:app"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 1
    assert "cannot import 'nosuchmodule'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


async def test_app_is_imported_from_the_current_directory(
    nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    (tmp_path / "mytasks.py").write_text(
        "from jsqueue import App\n"
        f"app = App('mine', prefix={jsq_prefix!r})\n"
        "@app.task(name='hello')\n"
        "def hello(who: str) -> str:\n"
        "    return f'hello {who}'\n"
    )
    producer = App("producer", url=nats_server.url, prefix=jsq_prefix)

    @producer.task(name="hello")
    def hello(who: str) -> str: ...

    try:
        async with producer:
            job = await hello.delay("there")
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "jsqueue", "worker", "-A", "mytasks:app", "--burst"],
                env={**os.environ, "JSQUEUE_URL": nats_server.url},
                cwd=tmp_path,  # as Celery does: -A finds modules in the current directory
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            assert await job.get(timeout=5) == "hello there"
    finally:
        await destroy(producer)


def test_worker_cli_against_unreachable_server_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jsqueue",
            "worker",
            "-A",
            "tests.apps.faulty:app",
            "--url",
            "nats://127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert out.returncode == 1
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("Error: cannot reach NATS at nats://127.0.0.1:1")
    )


async def test_second_signal_exits_at_once(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    slow = faulty.tasks["tests.apps.faulty.slow"]
    async with faulty:
        job = await slow.delay(30.0, str(tmp_path))
        with worker_process(nats_server.url, jsq_prefix, tmp_path, "--grace", "60") as worker:
            await wait_until(
                lambda: (tmp_path / f"{job.id}.start").exists(), 20, "the job to start"
            )
            worker.signal(signal.SIGTERM)
            await wait_until(
                lambda: "stopping gracefully" in worker.output(), 10, "the first signal"
            )
            worker.signal(signal.SIGINT)
            started = time.monotonic()
            assert await asyncio.to_thread(worker.wait, 10) == 128 + signal.SIGINT
            assert time.monotonic() - started < 5
        assert "again: exiting now" in worker.output()


async def test_log_level_warning_silences_job_lines(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    quick = faulty.tasks["tests.apps.faulty.quick"]
    async with faulty:
        await quick.delay(1)
        with worker_process(
            nats_server.url, jsq_prefix, tmp_path, "--burst", "--log-level", "WARNING"
        ) as quiet:
            assert await asyncio.to_thread(quiet.wait, 30) == 0
        await quick.delay(2)
        with worker_process(nats_server.url, jsq_prefix, tmp_path, "--burst") as loud:
            assert await asyncio.to_thread(loud.wait, 30) == 0
    assert "succeeded" not in quiet.output()
    assert quiet.output().strip() == ""
    [line] = [x for x in loud.output().splitlines() if "succeeded in" in x]
    assert "tests.apps.faulty.quick[" in line
    assert "(attempt 1)" in line
