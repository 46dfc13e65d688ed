"""Cluster-wide limits with real worker processes: a rate limit held by three workers together,
a concurrency cap that survives a worker SIGKILLed holding a slot, waits that are no attempts
and block no other task, and unique jobs sent from separate processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from jsqueue import App, JobState
from jsqueue.errors import ConfigError
from jsqueue.services import limits
from jsqueue.testing import Process, wait_state, wait_until
from jsqueue.wire.server import NatsServer

from .support import ROOT, app_of

pytestmark = pytest.mark.slow

ACK_WAIT = "3"


@pytest.fixture
async def limitapp(
    nats_server: NatsServer, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    async with app_of(
        "limitapp", nats_server, jsq_prefix, monkeypatch, JSQ_TEST_ACK_WAIT=ACK_WAIT
    ) as app:
        yield app


def _env(app: App) -> dict[str, str]:
    return {"JSQ_TEST_PREFIX": app.settings.prefix, "JSQ_TEST_ACK_WAIT": ACK_WAIT}


@contextmanager
def workers(app: App, tmp: Path, n: int, *args: str) -> Iterator[list[Process]]:
    with ExitStack() as stack:
        procs = [
            stack.enter_context(
                Process.jsqueue(
                    "worker",
                    "-A",
                    "tests.apps.limitapp:app",
                    "--url",
                    str(app.settings.url),
                    *args,
                    env=_env(app),
                    cwd=ROOT,
                    log_dir=tmp,
                    name=f"w{i}",
                )
            )
            for i in range(n)
        ]
        yield procs


def marks(tmp: Path) -> list[tuple[str, str, int, float, int]]:
    path = tmp / "marks"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        kind, job, pid, at, attempt = line.split()
        rows.append((kind, job, int(pid), float(at), int(attempt)))
    return rows


def kinds(tmp: Path, kind: str) -> list[tuple[str, str, int, float, int]]:
    return [row for row in marks(tmp) if row[0] == kind]


def task(app: App, name: str) -> Any:
    return app.tasks[f"tests.apps.limitapp.{name}"]


async def test_a_rate_limit_holds_for_three_workers_together_and_blocks_no_other_task(
    limitapp: App, tmp_path: Path
) -> None:
    from tests.apps.limitapp import RATE

    limited, free = task(limitapp, "limited"), task(limitapp, "free")
    m = str(tmp_path)
    total = int(RATE * 12)
    async with limitapp:
        await limited.starmap([(m,)] * total)
        await free.starmap([(m,)] * 50)  # behind the whole limited backlog, on the same queue
        with workers(limitapp, tmp_path, 3, "-c", "8") as procs:
            await wait_until(lambda: len(kinds(tmp_path, "free")) == 50, 30, "the free jobs")
            freed = time.time()
            await wait_until(
                lambda: len(kinds(tmp_path, "limited")) == total, 60, "every limited job"
            )
            outputs = [p.output() for p in procs]
        starts = sorted(row[3] for row in kinds(tmp_path, "limited"))
        first = starts[0]
        window = [t for t in starts if first + 1 <= t < first + 11]
        rate = len(window) / 10
        # the free jobs did not wait behind the limited backlog (about 12 s long)
        assert freed - first < 6, f"free jobs done {freed - first:.1f}s after the first start"
        assert abs(rate - RATE) <= 0.1 * RATE, f"{rate:.1f}/s against a limit of {RATE}/s"
        assert len({row[2] for row in kinds(tmp_path, "limited")}) == 3  # all three took part
        # a wait is not an attempt: every job ran once, at attempt 1, nothing dead-lettered
        assert {row[4] for row in kinds(tmp_path, "limited")} == {1}
        assert len({row[1] for row in kinds(tmp_path, "limited")}) == total
        broker = await limitapp.broker()
        dead = await broker.streams.state(limitapp.settings.dlq_stream)
        assert dead.messages == 0
        assert not any("Traceback" in out for out in outputs)
    print(f"[rate] {rate:.1f}/s over 10 s against {RATE:g}/s, 3 workers")


async def test_a_concurrency_cap_holds_across_workers_and_a_killed_holder_frees_its_slot(
    limitapp: App, tmp_path: Path
) -> None:
    capped, free = task(limitapp, "capped"), task(limitapp, "free")
    m = str(tmp_path)
    async with limitapp:
        await capped.starmap([(m, 0.4)] * 30)
        await free.starmap([(m,)] * 30)
        with workers(limitapp, tmp_path, 3, "-c", "4") as procs:
            await wait_until(lambda: len(kinds(tmp_path, "free")) == 30, 30, "the free jobs")
            # kill a worker while it runs capped jobs: it dies holding slots
            await wait_until(lambda: len(kinds(tmp_path, "start")) >= 4, 30, "capped jobs")
            running = {row[1] for row in kinds(tmp_path, "start")} - {
                row[1] for row in kinds(tmp_path, "end")
            }
            holders = {row[2] for row in kinds(tmp_path, "start") if row[1] in running}
            victim = next(p for p in procs if p.pid in holders)
            victim.kill()
            killed_at = time.time()
            ended = {row[1] for row in kinds(tmp_path, "end")}
            await wait_until(
                lambda: len({row[1] for row in kinds(tmp_path, "end")}) == 30,
                90,
                "all 30 capped jobs to end",
            )
    rows = kinds(tmp_path, "start") + kinds(tmp_path, "end")
    # a run that the kill cut short ends at the kill
    cut = {row[1] for row in kinds(tmp_path, "start") if row[2] == victim.pid} - ended
    events = [(at, 1 if kind == "start" else -1) for kind, _, _, at, _ in rows]
    events += [(killed_at, -1) for _ in cut]
    level = peak = 0
    full_again = None  # when three ran at once again after the kill
    for at, step in sorted(events):
        level += step
        peak = max(peak, level)
        if at > killed_at and level == 3 and full_again is None:
            full_again = at
    assert cut, "the kill hit no capped job"
    assert peak <= 3, f"{peak} capped jobs ran at once (max_concurrency=3)"
    # the killed worker's slots came back within ack_wait (a parked job looks every 0.5 s)
    assert full_again is not None
    assert full_again - killed_at <= float(ACK_WAIT) + 1.5, full_again - killed_at
    # and the jobs the kill cut short ran again, on another worker
    later = [row for row in kinds(tmp_path, "start") if row[1] in cut and row[3] > killed_at]
    assert len(later) == len(cut)
    assert all(row[2] != victim.pid for row in later)


async def _producer(app: App, *args: str) -> str:
    code = (
        "import sys, asyncio\n"
        "from tests.apps.limitapp import app, unique\n"
        "async def main():\n"
        "    async with app:\n"
        "        job = await unique.delay(sys.argv[1], float(sys.argv[2]))\n"
        "        print(job.id)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, **_env(app), "JSQUEUE_URL": str(app.settings.url)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def test_unique_jobs_from_separate_processes_while_queued_and_while_running(
    limitapp: App, tmp_path: Path
) -> None:
    m = str(tmp_path)
    async with limitapp:
        # queued: no worker yet; three processes send the same call at once
        ids = await asyncio.gather(*(_producer(limitapp, m, "-1") for _ in range(3)))
        assert len(set(ids)) == 1, ids
        other = await _producer(limitapp, m, "0.1")  # other arguments: another key
        assert other != ids[0]
        with workers(limitapp, tmp_path, 1, "-c", "4"):
            await wait_until(lambda: len(kinds(tmp_path, "unique")) == 2, 30, "both to start")
            # running (until the file go exists): the same call again is the running job
            assert await _producer(limitapp, m, "-1") == ids[0]
            (tmp_path / "go").touch()
            job = task(limitapp, "unique").result(ids[0])
            assert await job.get(timeout=30) == ids[0]
            # final: the key is released, the next call is a new job
            again = await _producer(limitapp, m, "-1")
            assert again != ids[0]
            assert await task(limitapp, "unique").result(again).get(timeout=30) == again
    assert len(kinds(tmp_path, "unique")) == 3  # ids[0], other, again: each ran once


async def test_a_unique_key_holds_while_delayed_or_retrying_runs_out_and_is_repaired(
    limitapp: App, tmp_path: Path
) -> None:
    briefly, unique = task(limitapp, "briefly_unique"), task(limitapp, "unique")
    m = str(tmp_path)
    async with limitapp:
        first = await briefly.delay(m)
        assert (await briefly.delay(m)).id == first.id
        await asyncio.sleep(2.5)  # unique_for=1: the server drops the key after it (TTL)
        assert (await briefly.delay(m)).id != first.id
        # a sender that died between its claim and its publish: a claim with no job behind it
        broker = await limitapp.broker()
        store = await limits.bucket(broker)
        key = "lost-claim"
        stale = {"job": "claimed-then-lost", "at": time.time() - 2 * limits.CLAIM_REPAIR}
        await store.create(f"uniq.{key}", json.dumps(stale).encode(), ttl=60)
        job = await unique.apply_async((m, 0.0), unique_key=key)
        assert job.id == "claimed-then-lost"  # the next sender sends its job under the claim
        # delayed: a job due in an hour holds its key
        delayed = await unique.apply_async((m, 0.0), unique_key="delayed", countdown=3600)
        assert (await unique.apply_async((m, 0.5), unique_key="delayed")).id == delayed.id
        retrying = task(limitapp, "retrying")
        first_try = await retrying.delay(m)
        with workers(limitapp, tmp_path, 1):
            assert await job.get(timeout=30) == "claimed-then-lost"
            assert await job.state() is JobState.SUCCESS
            await wait_until(lambda: len(kinds(tmp_path, "retrying")) == 1, 30, "its first try")
            # retrying (an hour away, on a server schedule): the same call is the same job
            await wait_state(first_try, JobState.RETRY, 30)
            assert (await retrying.delay(m)).id == first_try.id
    # a unique job's handle may be another sender's job: callbacks on it are refused
    with pytest.raises(ConfigError, match="cannot take link"):
        await unique.apply_async((m, 0.0), link=briefly.s(m))


async def test_bad_limits_are_refused_where_the_task_is_defined_or_the_job_sent(
    limitapp: App,
) -> None:
    for bad in ("100", "100/x", "0/s", "-1/s", "ten/s", "1e3/s", "5000/s", ""):
        with pytest.raises(ConfigError, match="rate"):
            limitapp.task(name=f"bad.rate.{bad}", rate_limit=bad)(lambda: None)
    for cap in (0, -1, True, 2.5, "3"):
        with pytest.raises(ConfigError, match="max_concurrency"):
            limitapp.task(name=f"bad.cap.{cap!r}", max_concurrency=cap)(lambda: None)
    for seconds in (0, -5, "1h", True):
        with pytest.raises(ConfigError, match="unique_for"):
            limitapp.task(name=f"bad.unique.{seconds!r}", unique_for=seconds)(lambda: None)
    with pytest.raises(ConfigError, match="unknown task option"):
        limitapp.task(name="bad.option", rate_limt="1/s")(lambda: None)  # type: ignore[call-arg]
    unique = task(limitapp, "unique")
    for key in ("has space", "a:b", "x" * 201, "", ".a"):
        with pytest.raises(ConfigError, match="unique_key"):
            await unique.apply_async(("m", 0.0), unique_key=key)
