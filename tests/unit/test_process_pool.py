"""The process pool with real child processes: results and errors come back as themselves, limits
and crashes cost one job and one child, and no child outlives the pool or a SIGKILLed parent.

Every wait has a timeout; process exits are awaited through pidfds, not polled; whatever a test
starts is killed by PID at the end, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tenacity import retry_if_exception_type

from jsqueue import Reject, Retry, RetryPolicy
from jsqueue.errors import (
    ChildDied,
    ConfigError,
    PoolClosed,
    RemoteError,
    SerializeError,
    Terminated,
    TimeLimitExceeded,
)
from jsqueue.pools import ChildJob, ChildOutcome, ProcessPool, report
from jsqueue.pools.child import EXIT_ORPHANED
from jsqueue.testing import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.poolapp:app"
T = "tests.apps.poolapp."
Reports = list[tuple[str, str, dict[str, Any]]]
MakePool = Callable[..., Awaitable[ProcessPool]]


def job(name: str, *args: Any, job_id: str | None = None, **options: Any) -> ChildJob:
    return ChildJob(job_id or f"{name}-{time.monotonic_ns()}", T + name, args, {}, **options)


async def run(pool: ProcessPool, child_job: ChildJob, timeout: float = 10.0) -> ChildOutcome:
    return await asyncio.wait_for(pool.run(child_job), timeout)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait (blocking) until ``pid`` exits, through a pidfd; False after ``timeout``.

    An exited child that nobody reaps (an orphan whose new parent does not wait) counts as gone:
    it runs no more code.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)


async def exited(pid: int, timeout: float = 5.0) -> bool:
    return await asyncio.to_thread(wait_gone, pid, timeout)


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def forkserver_children() -> list[psutil.Process]:
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return []
    with contextlib.suppress(psutil.NoSuchProcess):
        return list(psutil.Process(pid).children(recursive=True))
    return []


@pytest.fixture(scope="module", autouse=True)
def _stop_multiprocessing_helpers() -> Iterator[None]:
    """The forkserver and resource tracker that the pools start: killed by PID at the end."""
    yield
    for proc in forkserver_children():
        kill(proc.pid)
    for helper in (
        multiprocessing.forkserver._forkserver,
        multiprocessing.resource_tracker._resource_tracker,
    ):
        pid = getattr(helper, "_forkserver_pid", None) or getattr(helper, "_pid", None)
        if pid is not None:
            kill(pid)
            stop: Callable[[], None] = getattr(helper, "_stop")  # noqa: B009 - private
            stop()  # closes its pipe and reaps the pid


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[ProcessPool] = []

    async def make(size: int = 1, **options: Any) -> ProcessPool:
        pool = ProcessPool(APP, size, **options)
        pools.append(pool)
        await asyncio.wait_for(pool.start(), 30)
        return pool

    try:
        yield make
    finally:
        for pool in pools:
            await asyncio.wait_for(pool.close(kill=True), 30)
        for proc in forkserver_children():  # whatever the pool missed
            kill(proc.pid)


# -- running jobs ------------------------------------------------------------------------------


async def test_a_child_runs_tasks_with_their_job_context(make_pool: MakePool) -> None:
    pool = await make_pool(2, worker_id="w1")
    info = job(
        "job_info",
        job_id="j-ctx",
        attempt=2,
        queue="billing",
        headers={"trace": "abc"},
        parent_id="p1",
        root_id="r1",
    )
    outcome = await run(pool, info)
    assert outcome.error is None
    assert outcome.value == {
        "id": "j-ctx",
        "task": T + "job_info",
        "attempt": 2,
        "queue": "billing",
        "worker": "w1",
        "headers": {"trace": "abc"},
        "parent_id": "p1",
        "root_id": "r1",
        "pid": outcome.pid,
    }
    assert outcome.pid in {c.pid for c in pool.children()}
    assert outcome.pid != os.getpid()
    assert outcome.rss_mb is not None
    assert outcome.rss_mb > 1
    assert (await run(pool, job("add", 2, 3))).value == 5
    assert (await run(pool, job("async_add", 2, 3))).value == 5
    assert sum(c.jobs_done for c in pool.children()) == 3


async def test_jobs_wait_for_a_free_child(make_pool: MakePool) -> None:
    pool = await make_pool(2)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(pool.run(job("add", i, i)) for i in range(20))), 20
    )
    assert [o.value for o in outcomes] == [2 * i for i in range(20)]
    assert {o.pid for o in outcomes} <= {c.pid for c in pool.children()}


async def test_json_jobs_go_plain_and_other_jobs_by_value(make_pool: MakePool) -> None:
    class Seven:  # defined here: only cloudpickle (by value) can bring it to the child
        def __add__(self, other: int) -> int:
            return 7 + other

    pool = await make_pool(1)
    assert (await run(pool, job("add", 2, 3, plain=True))).value == 5
    assert (await run(pool, job("add", Seven(), 3))).value == 10
    # marked plain but not plain after all: the job still travels, by value
    assert (await run(pool, job("add", Seven(), 4, plain=True))).value == 11


async def test_memory_is_known_after_every_job_without_a_memory_limit(
    make_pool: MakePool,
) -> None:
    pool = await make_pool(1)
    outcomes = [await run(pool, job("add", i, 1)) for i in range(5)]
    # the child reads it at most once a second here; the pool keeps its last figure
    assert all(o.rss_mb is not None and o.rss_mb > 1 for o in outcomes)
    (child,) = pool.children()
    assert child.rss_mb is not None
    assert child.rss_mb > 1


async def test_a_child_that_cannot_import_the_app_fails_start_with_its_error() -> None:
    pool = ProcessPool("tests.apps.no_such_module:app", 2)
    with pytest.raises(ConfigError, match=r"No module named 'tests\.apps\.no_such_module'"):
        await asyncio.wait_for(pool.start(), 30)
    assert pool.children() == []
    pool = ProcessPool("tests.apps.poolapp:no_such_app", 1)
    with pytest.raises(ConfigError, match="has no attribute 'no_such_app'"):
        await asyncio.wait_for(pool.start(), 30)


# -- what comes back ---------------------------------------------------------------------------


async def test_a_task_exception_comes_back_as_itself_for_the_retry_policy(
    make_pool: MakePool,
) -> None:
    pool = await make_pool()
    outcome = await run(pool, job("connection_lost", "the database went away"))
    assert type(outcome.error) is ConnectionError
    assert str(outcome.error) == "the database went away"
    assert RetryPolicy(retry=retry_if_exception_type(ConnectionError)).retries(outcome.error)
    assert "in connection_lost" in outcome.traceback
    assert "raise ConnectionError(message)" in outcome.traceback


async def test_an_exception_that_cannot_be_unpickled_becomes_a_remote_error(
    make_pool: MakePool,
) -> None:
    pool = await make_pool()
    outcome = await run(pool, job("two_part_error"))
    assert isinstance(outcome.error, RemoteError)
    assert str(outcome.error) == "tests.apps.poolapp.TwoPartError: left/right"
    assert "in two_part_error" in outcome.error.remote_traceback
    assert outcome.traceback == outcome.error.remote_traceback


async def test_a_value_that_cannot_be_pickled_is_a_serialize_error_naming_the_task(
    make_pool: MakePool,
) -> None:
    pool = await make_pool()
    outcome = await run(pool, job("unpicklable_value"))
    assert isinstance(outcome.error, SerializeError)
    assert "the return value of task tests.apps.poolapp.unpicklable_value" in str(outcome.error)
    assert (await run(pool, job("add", 1, 1))).pid == outcome.pid  # the child is fine


def test_retry_and_reject_survive_pickling() -> None:
    retry = pickle.loads(pickle.dumps(Retry(2.5, "busy")))
    assert (retry.delay, retry.reason, str(retry)) == (2.5, "busy", "busy")
    bare = pickle.loads(pickle.dumps(Retry(4)))
    assert (bare.delay, bare.reason, str(bare)) == (4, "", "retry in 4s")
    reject = pickle.loads(pickle.dumps(Reject("malformed")))
    assert (reject.reason, str(reject)) == ("malformed", "malformed")


def test_the_pool_errors_survive_pickling() -> None:
    died = pickle.loads(pickle.dumps(ChildDied("pool child 7 was killed", pid=7, exitcode=-9)))
    assert (str(died), died.pid, died.exitcode) == ("pool child 7 was killed", 7, -9)
    remote = pickle.loads(pickle.dumps(RemoteError("app.Oops", "no", "Traceback...")))
    assert (str(remote), remote.remote_traceback) == ("app.Oops: no", "Traceback...")


async def test_retry_and_reject_raised_in_a_child_keep_their_fields(make_pool: MakePool) -> None:
    pool = await make_pool()
    retry = (await run(pool, job("retry_later"))).error
    assert isinstance(retry, Retry)
    assert (retry.delay, retry.reason) == (3.0, "the printer is busy")
    reject = (await run(pool, job("reject"))).error
    assert isinstance(reject, Reject)
    assert reject.reason == "the input is malformed"


async def test_reports_reach_the_parent_while_the_job_runs(make_pool: MakePool) -> None:
    reports: Reports = []
    pool = await make_pool(on_report=lambda *r: reports.append(r))
    outcome = await run(pool, job("progress", 3, job_id="j-progress"))
    assert outcome.value == 3
    assert reports == [("j-progress", "progress", {"step": s}) for s in range(3)]
    assert report("outside", step=1) is False  # not in a pool child: nothing to report to


# -- time limits -------------------------------------------------------------------------------


async def test_the_hard_time_limit_kills_a_spinning_child_and_a_fresh_one_follows(
    make_pool: MakePool,
) -> None:
    pool = await make_pool()
    started = time.monotonic()
    outcome = await run(pool, job("spin", time_limit=1.0))
    assert time.monotonic() - started < 2.0
    assert isinstance(outcome.error, TimeLimitExceeded)
    assert "time_limit of 1.0s" in str(outcome.error)
    assert f"pool child {outcome.pid} was killed" in str(outcome.error)
    assert await exited(outcome.pid)
    after = await run(pool, job("whoami"))
    assert after.value != outcome.pid


async def test_a_soft_time_limit_lets_the_task_clean_up_and_return(make_pool: MakePool) -> None:
    pool = await make_pool()
    outcome = await run(pool, job("soft_cleanup", 30.0, soft_time_limit=0.2, time_limit=10.0))
    assert outcome.value == "cleaned up"
    assert outcome.duration < 2.0
    assert (await run(pool, job("whoami"))).value == outcome.pid  # the same child goes on


async def test_a_task_that_ignores_its_soft_limit_meets_the_hard_one(make_pool: MakePool) -> None:
    reports: Reports = []
    pool = await make_pool(on_report=lambda *r: reports.append(r))
    outcome = await run(pool, job("stubborn", soft_time_limit=0.2, time_limit=1.0))
    assert isinstance(outcome.error, TimeLimitExceeded)
    assert [kind for _, kind, _ in reports] == ["soft limit ignored"]  # raised once, not again


async def test_a_soft_limit_signal_between_jobs_does_nothing(make_pool: MakePool) -> None:
    pool = await make_pool()
    pid = (await run(pool, job("whoami"))).value
    os.kill(pid, signal.SIGUSR1)  # as if a soft limit passed just after the job ended
    outcome = await run(pool, job("soft_cleanup", 0.05))
    assert (outcome.value, outcome.pid) == ("finished", pid)


# -- crashes, termination, recycling -----------------------------------------------------------


async def test_a_crashing_child_fails_only_its_own_job(make_pool: MakePool) -> None:
    spinning: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_report(job_id: str, kind: str, data: dict[str, Any]) -> None:
        if kind == "spinning" and not spinning.done():
            spinning.set_result(data["pid"])

    pool = await make_pool(3, on_report=on_report)
    adds = [asyncio.ensure_future(pool.run(job("add", i, 1))) for i in range(60)]
    spin = asyncio.ensure_future(pool.run(job("spin")))
    crashes = await asyncio.wait_for(
        asyncio.gather(pool.run(job("exit_hard", 1)), pool.run(job("segfault"))), 10
    )
    kill(await asyncio.wait_for(spinning, 10))
    killed = await asyncio.wait_for(spin, 10)
    values = [o.value for o in await asyncio.wait_for(asyncio.gather(*adds), 20)]
    assert values == [i + 1 for i in range(60)]
    for outcome, how in zip(
        [*crashes, killed],
        ["exited with code 1", "killed by SIGSEGV", "killed by SIGKILL"],
        strict=True,
    ):
        assert isinstance(outcome.error, ChildDied), outcome
        assert how in str(outcome.error)
        assert f"pool child {outcome.pid} " in str(outcome.error)
    for _ in range(30):  # the pool keeps working on fresh children
        assert (await run(pool, job("add", 1, 1))).value == 2
    await wait_until(lambda: len(pool.children()) == 3, 10, "three children in service")
    assert not {o.pid for o in [*crashes, killed]} & {c.pid for c in pool.children()}


async def test_an_idle_child_killed_from_outside_is_replaced(make_pool: MakePool) -> None:
    pool = await make_pool()
    pid = (await run(pool, job("whoami"))).value
    kill(pid)
    assert await exited(pid)
    assert (await run(pool, job("whoami"))).value != pid


async def test_terminate_kills_the_child_running_the_job(make_pool: MakePool) -> None:
    spinning = asyncio.Event()
    pool = await make_pool(on_report=lambda *r: spinning.set())
    running = asyncio.ensure_future(pool.run(job("spin", job_id="j-spin")))
    await asyncio.wait_for(spinning.wait(), 10)
    assert pool.children()[0].job_id == "j-spin"
    assert not await pool.terminate("j-other")
    started = time.monotonic()
    assert await pool.terminate("j-spin")
    outcome = await asyncio.wait_for(running, 1.0)
    assert time.monotonic() - started < 1.0
    assert isinstance(outcome.error, Terminated)
    assert "j-spin" in str(outcome.error)
    assert (await run(pool, job("whoami"))).value != outcome.pid


async def test_cancelling_run_kills_the_child_running_the_job(make_pool: MakePool) -> None:
    spinning = asyncio.Event()
    pool = await make_pool(on_report=lambda *r: spinning.set())
    running = asyncio.ensure_future(pool.run(job("spin")))
    await asyncio.wait_for(spinning.wait(), 10)
    pid = pool.children()[0].pid
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 5)
    assert await exited(pid)
    assert (await run(pool, job("whoami"))).value != pid


async def test_a_child_is_replaced_after_max_tasks_per_child(make_pool: MakePool) -> None:
    pool = await make_pool(max_tasks_per_child=3)
    pids = [(await run(pool, job("whoami"))).value for _ in range(7)]
    assert len(set(pids)) == 3
    assert pids[0:3] == [pids[0]] * 3
    assert pids[3:6] == [pids[3]] * 3


async def test_a_child_over_max_memory_is_replaced_after_its_job(make_pool: MakePool) -> None:
    pool = await make_pool(max_memory_per_child=150)
    small = await run(pool, job("hog", 1))
    assert (await run(pool, job("whoami"))).value == small.pid  # under the limit: kept
    big = await run(pool, job("hog", 200))
    assert big.value == small.pid
    assert big.rss_mb is not None
    assert big.rss_mb > 200
    assert (await run(pool, job("whoami"))).value != big.pid
    assert await exited(big.pid)


# -- closing, and never outliving the parent ---------------------------------------------------


async def test_close_stops_idle_children_and_refuses_new_jobs(make_pool: MakePool) -> None:
    pool = await make_pool(2)
    pids = [c.pid for c in pool.children()]
    await asyncio.wait_for(pool.close(), 15)
    assert not any(psutil.pid_exists(pid) for pid in pids)  # exited and reaped: no zombie
    assert pool.children() == []
    assert isinstance((await run(pool, job("add", 1, 1))).error, PoolClosed)


async def test_close_with_kill_stops_a_busy_child_and_the_jobs_waiting(
    make_pool: MakePool,
) -> None:
    spinning = asyncio.Event()
    pool = await make_pool(on_report=lambda *r: spinning.set())
    busy = asyncio.ensure_future(pool.run(job("spin")))
    waiting = asyncio.ensure_future(pool.run(job("add", 1, 1)))
    await asyncio.wait_for(spinning.wait(), 10)
    pid = pool.children()[0].pid
    await asyncio.wait_for(pool.close(kill=True), 15)
    assert not psutil.pid_exists(pid)
    for outcome in await asyncio.wait_for(asyncio.gather(busy, waiting), 5):
        assert isinstance(outcome.error, PoolClosed)


PARENT = """
import asyncio
from jsqueue.pools import ChildJob, ProcessPool

async def main():
    spinning = asyncio.Event()
    pool = ProcessPool("tests.apps.poolapp:app", 2, on_report=lambda *r: spinning.set())
    await pool.start()
    job = asyncio.ensure_future(pool.run(ChildJob("j", "tests.apps.poolapp.spin", (), {})))
    await asyncio.wait_for(spinning.wait(), 30)
    print(*(c.pid for c in pool.children()), flush=True)
    await job

asyncio.run(main())
"""


def test_no_child_outlives_a_sigkilled_parent() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], cwd=ROOT, env=env, stdout=subprocess.PIPE
    )
    started: list[int] = []
    try:
        assert parent.stdout is not None
        readable, _, _ = select.select([parent.stdout], [], [], 30)
        assert readable, "the parent did not start its pool within 30s"
        children = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(children) == 2
        helpers = [p.pid for p in psutil.Process(parent.pid).children()]  # forkserver, tracker
        started = [*children, *helpers]
        assert psutil.Process(children[0]).ppid() in helpers
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        for pid in started:
            assert wait_gone(pid, max(0.0, deadline - time.monotonic())), f"{pid} outlived it"
    finally:
        parent.kill()
        parent.wait(5)
        if parent.stdout is not None:
            parent.stdout.close()
        for pid in started:
            kill(pid)


def test_a_child_whose_parent_changed_before_it_armed_pdeathsig_exits() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = "from jsqueue.pools.child import _tie_to_parent; _tie_to_parent(1)"
    done = subprocess.run([sys.executable, "-c", probe], env=env, timeout=30)
    assert done.returncode == EXIT_ORPHANED


# -- a busy child handed its next job ----------------------------------------------------------


async def _running_gated(pool: ProcessPool, marks: Path) -> asyncio.Future[ChildOutcome]:
    first = asyncio.ensure_future(pool.run(job("gated", str(marks), "first"), ahead=True))
    await wait_until(lambda: (marks / "first").exists(), 10, "the first job's start")
    return first


async def test_a_job_handed_ahead_starts_when_the_child_is_done_and_its_limit_counts_from_then(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool()
    first = await _running_gated(pool, tmp_path)
    starts: list[float] = []
    # a time limit of 1 s, handed over more than 1 s before the child gets to it
    second = asyncio.ensure_future(
        pool.run(
            job("add", 2, 3, job_id="j-next", time_limit=1.0),
            ahead=True,
            on_start=lambda: starts.append(time.monotonic()),
        )
    )
    await wait_until(lambda: [j.job_id for j in pool.handed()] == ["j-next"], 5, "the hand-over")
    handed_at = time.monotonic()
    await asyncio.sleep(1.2)  # the scenario: longer than the handed job's limit
    assert starts == []  # handed, not started
    running = pool.children()[0].job_id
    assert running is not None
    assert running.startswith("gated-")  # the child still runs the first job
    (tmp_path / "go").touch()
    done = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert done[1].error is None, done[1].error
    assert done[1].value == 5
    assert done[1].pid == done[0].value  # the same child, no wait on the parent between
    assert len(starts) == 1
    assert starts[0] - handed_at > 1.0
    assert pool.handed() == []


async def test_a_job_handed_ahead_and_terminated_never_runs(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool()
    first = await _running_gated(pool, tmp_path)
    second = asyncio.ensure_future(
        pool.run(job("gated", str(tmp_path), "second", job_id="j-second"), ahead=True)
    )
    await wait_until(lambda: len(pool.handed()) == 1, 5, "the hand-over")
    assert await pool.terminate("j-second")
    outcome = await asyncio.wait_for(second, 1.0)  # settled at once, while the first runs
    assert isinstance(outcome.error, Terminated)
    assert "before it started" in str(outcome.error)
    assert not first.done()
    (tmp_path / "go").touch()
    assert (await asyncio.wait_for(first, 10)).error is None
    after = await run(pool, job("whoami"))
    assert not (tmp_path / "second").exists()  # it never ran
    assert after.value != (await first).value  # its child made way for a fresh one


async def test_a_job_handed_to_a_child_that_dies_first_runs_on_another(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool()
    first = await _running_gated(pool, tmp_path)
    dying = pool.children()[0].pid
    second = asyncio.ensure_future(pool.run(job("whoami"), ahead=True))
    await wait_until(lambda: len(pool.handed()) == 1, 5, "the hand-over")
    kill(dying)
    died = await asyncio.wait_for(first, 10)
    assert isinstance(died.error, ChildDied)
    moved = await asyncio.wait_for(second, 10)
    assert moved.error is None
    assert moved.value not in (None, dying)  # it ran, once, on the fresh child


async def test_no_job_is_handed_to_a_child_on_its_last_job(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool(max_tasks_per_child=1)
    first = await _running_gated(pool, tmp_path)
    second = asyncio.ensure_future(pool.run(job("whoami"), ahead=True))
    await asyncio.sleep(0)  # let it ask for a child
    assert pool.handed() == []  # it waits for the child that replaces this one
    (tmp_path / "go").touch()
    outcomes = await asyncio.wait_for(asyncio.gather(first, second), 20)
    assert outcomes[1].value != outcomes[0].value


async def test_a_job_handed_ahead_whose_run_is_cancelled_never_runs(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = await make_pool()
    first = await _running_gated(pool, tmp_path)
    second = asyncio.ensure_future(pool.run(job("gated", str(tmp_path), "second"), ahead=True))
    await wait_until(lambda: len(pool.handed()) == 1, 5, "the hand-over")
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(second, 5)
    assert not first.done()  # the job the child runs goes on
    (tmp_path / "go").touch()
    assert (await asyncio.wait_for(first, 10)).error is None
    assert (await run(pool, job("add", 1, 1))).value == 2
    assert not (tmp_path / "second").exists()
