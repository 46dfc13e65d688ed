"""Nested canvas with Celery's semantics, options that travel with a step, error callbacks,
progress and the group handle, on a real server with Celery's own test tasks."""

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tenacity import stop_after_attempt, wait_fixed

from jsqueue import (
    App,
    GroupResult,
    JobState,
    RetryPolicy,
    TaskFailed,
    chain,
    chord,
    current_job,
    group,
)
from jsqueue.hooks import Hooks, JobEvent
from jsqueue.services.status import locate_job
from jsqueue.testing import burst, running_worker


@pytest.fixture
def celery_app(jsq_app: App) -> App:
    """The tasks of Celery's ``t/integration/tasks.py`` that its canvas tests use."""

    @jsq_app.task(name="add")
    async def add(x: Any, y: Any) -> Any:
        return x + y

    @jsq_app.task(name="tsum")
    async def tsum(nums: list[int]) -> int:
        return sum(nums)

    @jsq_app.task(name="add_to_all")
    async def add_to_all(nums: list[Any], val: Any) -> list[Any]:
        return [num + val for num in nums]

    @jsq_app.task(name="boom")
    async def boom(x: int = 0) -> int:
        raise ValueError(f"cannot handle {x}")

    return jsq_app


def t(app: App, name: str) -> Any:
    return app.tasks[name]


async def test_the_five_nested_forms_of_celerys_canvas_tests(celery_app: App) -> None:
    add, tsum, add_to_all = t(celery_app, "add"), t(celery_app, "tsum"), t(celery_app, "add_to_all")
    forms = {
        # test_chain_of_chain_with_a_single_task
        "chain of chain": (chain([chain(add.s(1, 2))]), 3),
        # test_group_chain: the step after a group gets the list of its results
        "group in chain": (
            add.s(2, 2) | group(add.s(i) for i in range(4)) | add_to_all.s(8),
            [12, 13, 14, 15],
        ),
        # test_chain_inside_group_receives_arguments
        "chain in group": (add.s(5, 6) | group((add.s(1) | add.s(2), add.s(3))), [14, 14]),
        # test_chord_in_chords_with_chains
        "chord in chord with chains": (
            chord(
                group(
                    [
                        chain(
                            add.si(1, 2), chord(group([add.si(1, 2), add.si(1, 2)]), add.si(1, 2))
                        ),
                        chain(
                            add.si(1, 2), chord(group([add.si(1, 2), add.si(1, 2)]), add.si(1, 2))
                        ),
                    ]
                ),
                add.si(2, 2),
            ),
            4,
        ),
        # test_nested_chord
        "nested chord": (
            chord(
                [
                    chord([add.s(1, 2), add.s(3, 4)], add.s([5])),
                    chord([add.s(6, 7)], add.s([10])),
                ],
                add_to_all.s(["A"]),
            ),
            [[3, 7, 5, "A"], [13, 10, "A"]],
        ),
        # and beyond Celery's five: a chord inside a chain, with steps after it
        "chord in chain": (
            add.s(1, 1) | chord([add.s(1), add.s(2)], tsum.s()) | add.s(100),
            107,
        ),
        "chain of chains": (chain(chain(add.s(1, 1), add.s(1)), chain(add.s(1), add.s(1))), 5),
        "empty chord": (chord([], tsum.s()), 0),
        # a group after a group: a chord whose body is a group (each member gets the list)
        "group after group": (group(add.s(1, 1), add.s(2, 2)) | group(tsum.s(), tsum.s()), [6, 6]),
        "chord with a group body": (chord([add.s(1, 1)], group(tsum.s(), add.s([3]))), [2, [2, 3]]),
        # a group inside a chain travels in the step before it: larger than any link list
        "wide group in chain": (
            add.s(0, 0) | group(add.s(i) for i in range(1500)) | tsum.s(),
            sum(range(1500)),
        ),
    }
    async with celery_app, running_worker(celery_app, concurrency=8):
        handles = {name: await canvas.delay() for name, (canvas, _) in forms.items()}
        results = {name: await h.get(timeout=30) for name, h in handles.items()}
    assert results == {name: expected for name, (_, expected) in forms.items()}
    assert isinstance(handles["chain in group"], GroupResult)


async def test_handles_know_their_parents(celery_app: App) -> None:
    add, tsum = t(celery_app, "add"), t(celery_app, "tsum")
    async with celery_app, running_worker(celery_app, concurrency=4):
        last = await (add.s(1, 2) | add.s(3) | add.s(4)).delay()
        called_back = await chord([add.s(1, 1), add.s(2, 2)], tsum.s()).delay()
        assert await last.get(timeout=10) == 10
        assert last.parent is not None
        assert last.parent.parent is not None
        assert await last.parent.get(timeout=5) == 6
        assert await last.parent.parent.get(timeout=5) == 3
        assert last.parent.parent.parent is None
        assert await called_back.get(timeout=10) == 6
        assert isinstance(called_back.parent, GroupResult)
        assert await called_back.parent.get(timeout=5) == [2, 4]


async def test_a_chord_whose_body_has_its_own_id_calls_back_under_that_id(celery_app: App) -> None:
    """Defect 1: the body's job_id clashed with the chord's (TypeError, redelivered for ever)."""
    add, tsum = t(celery_app, "add"), t(celery_app, "tsum")
    async with celery_app, running_worker(celery_app, concurrency=4):
        body = tsum.s().set(job_id="report-7")
        handle = await chord(group(add.s(i, i) for i in range(3)), body).delay()
        assert handle.id == "report-7"
        assert await handle.get(timeout=10) == 6
        nested = await (add.s(1, 1) | chord([add.s(1)], tsum.s().set(job_id="report-8"))).delay()
        assert nested.id == "report-8"
        assert await nested.get(timeout=10) == 3


async def test_every_option_of_a_later_step_travels_with_it(celery_app: App) -> None:
    """Defect 2: a later step's eta was dropped, and the step ran seconds early."""
    add = t(celery_app, "add")
    ran: dict[str, tuple[float, dict[str, str]]] = {}

    @celery_app.task(name="stamp")
    async def stamp(_: Any, tag: str) -> str:
        ran[tag] = (time.time(), current_job().headers)
        return current_job().queue

    eta = datetime.now(UTC) + timedelta(seconds=2)
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with celery_app, running_worker(celery_app, queues=["default", "other"]):
        step = await chain(add.s(1, 1), stamp.s("step").set(eta=eta, queue="other")).delay()
        body = await chord([add.s(1, 1)], stamp.s("body").set(eta=eta, headers={"k": "v"})).delay()
        gone = await chain(add.s(1, 1), stamp.s("expired").set(expires=past)).delay()
        assert await step.get(timeout=10) == "other"
        assert await body.get(timeout=10) == "default"
        with pytest.raises(TaskFailed) as expired:
            await gone.get(timeout=10)
    assert expired.value.state == "EXPIRED"
    assert ran["step"][0] >= eta.timestamp() - 0.2
    assert ran["body"][0] >= eta.timestamp() - 0.2
    assert ran["body"][1]["k"] == "v"
    assert "expired" not in ran


async def test_shapes_not_supported_are_refused_before_anything_is_sent(celery_app: App) -> None:
    add = t(celery_app, "add")
    async with celery_app:
        broker = await celery_app.broker()
        stream = celery_app.settings.jobs_stream
        before = (await broker.streams.state(stream)).messages
        with pytest.raises(TypeError, match="a chain step is a signature or a canvas"):
            chain(add.s(1, 1), 7)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="link= takes signatures"):
            await add.apply_async((1, 1), link=[add])
        with pytest.raises(TypeError, match="names a chord whose callback is one task"):
            await chord([add.s(1, 1)], group(add.s(1), add.s(2))).apply_async(job_id="c-1")
        assert (await broker.streams.state(stream)).messages == before


async def test_error_callbacks_run_once_per_shape(celery_app: App) -> None:
    add, boom, tsum = t(celery_app, "add"), t(celery_app, "boom"), t(celery_app, "tsum")
    calls: list[tuple[str, str, str, str]] = []
    attempts: list[int] = []

    @celery_app.task(name="on_fail")
    async def on_fail(tag: str, job_id: str, error: dict[str, str]) -> None:
        assert error["traceback"]  # the type, message and traceback text of the failure
        calls.append((tag, job_id, error["type"], error["message"]))

    @celery_app.task(name="bad_handler")
    async def bad_handler(job_id: str, error: dict[str, str]) -> None:
        raise RuntimeError("the handler fails too")

    @celery_app.task(
        name="flaky", retry=RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(0.05))
    )
    async def flaky() -> None:
        attempts.append(current_job().attempt)
        raise KeyError("never works")

    past = datetime.now(UTC) - timedelta(seconds=1)
    async with celery_app:
        single = await boom.s(1).on_error(on_fail.s("single")).delay()
        retried = await flaky.s().on_error(on_fail.s("retried")).delay()
        applied = await boom.apply_async((2,), link_error=on_fail.s("link_error"))
        step = boom.s().set(job_id="the-failing-step")
        chained = await (add.s(1, 1) | step | add.s(1)).on_error(on_fail.s("chain")).delay()
        members = [boom.s(3), boom.s(4), add.s(1, 1)]
        chorded = await chord(members, tsum.s()).on_error(on_fail.s("chord")).delay()
        inner = chord([boom.si(5), boom.si(6)], tsum.s())
        nested = await (add.s(1, 1) | inner | add.s(1)).on_error(on_fail.s("nested")).delay()
        grouped = await group(boom.s(7), boom.s(8)).on_error(on_fail.s("group")).delay()
        handled_badly = await boom.s(9).on_error(bad_handler.s()).delay()
        expired = await boom.s(10).set(expires=past).on_error(on_fail.s("expired")).delay()
        await burst(celery_app)  # everything, the error callbacks they send and retries included
        for handle in (single, retried, applied, chained, chorded, nested, handled_badly):
            with pytest.raises(TaskFailed):
                await handle.get(timeout=5)
        with pytest.raises(TaskFailed, match="cannot handle 9"):
            await handled_badly.get(timeout=1)  # the handler's failure never re-fails it
        handler_record = await celery_app.result(f"{handled_badly.id}.e0").info()
        assert await expired.state() is JobState.EXPIRED
        assert await grouped.failed()
    tags = sorted(tag for tag, *_ in calls)
    assert tags == ["chain", "chord", "group", "group", "link_error", "nested", "retried", "single"]
    by_tag = {tag: rest for tag, *rest in calls}
    assert by_tag["single"] == [single.id, "ValueError", "cannot handle 1"]
    assert by_tag["chain"][0] == "the-failing-step"
    assert by_tag["retried"][1] == "KeyError"
    assert attempts == [1, 2, 3]  # the handler ran after the retries, once
    assert handler_record["state"] == "FAILURE"
    assert handler_record["error"]["type"] == "RuntimeError"


class ProgressEvents(Hooks):
    def __init__(self) -> None:
        self.seen: list[JobEvent] = []

    async def on_event(self, event: JobEvent) -> None:
        if event.kind == "progress":
            self.seen.append(event)


async def test_progress_is_recorded_at_most_about_once_a_second(celery_app: App) -> None:
    """A coroutine and a ``def`` in a thread report thousands of times; the worker writes
    about once a second, and the last report lands while the job still runs."""
    go_on = asyncio.Event()
    thread_go_on = threading.Event()
    steps = 3000

    @celery_app.task(name="crunch")
    async def crunch() -> str:
        started = time.monotonic()
        for i in range(steps):
            current_job().progress(i + 1, steps, stage="crunching")
            if i % 100 == 0:
                await asyncio.sleep(0.05)  # about 1.5 s of work in all
        await go_on.wait()
        return f"{time.monotonic() - started:.1f}"

    @celery_app.task(name="crunch_in_thread")
    def crunch_in_thread() -> None:
        for i in range(steps):
            current_job().progress(i + 1, steps)
            if i % 100 == 0:
                time.sleep(0.05)
        thread_go_on.wait(30)

    events = ProgressEvents()
    celery_app.add_hook(events)
    async with celery_app, running_worker(celery_app, concurrency=4):
        began = time.monotonic()
        job, threaded = await crunch.delay(), await crunch_in_thread.delay()
        for handle in (job, threaded):
            deadline = time.monotonic() + 15
            while (seen := await handle.progress()) is None or seen.done < steps:
                assert time.monotonic() < deadline, f"progress of {handle.id}: {seen}"
                await asyncio.sleep(0.05)
            assert seen.fraction == 1.0
            assert await handle.state() is JobState.STARTED
        inspected = await locate_job(celery_app, job.id)
        assert inspected["where"] == "running"
        assert inspected["progress"]["done"] == steps
        assert inspected["progress"]["info"] == {"stage": "crunching"}
        go_on.set()
        thread_go_on.set()
        await job.get(timeout=10)
        await threaded.get(timeout=10)
        elapsed = time.monotonic() - began
        assert await job.progress() is None  # the final record replaced it
    for handle in (job, threaded):
        mine = [e for e in events.seen if e.job_id == handle.id]
        assert 1 <= len(mine) <= elapsed + 2, (len(mine), elapsed)
        assert mine[-1].progress is not None
        assert mine[-1].progress["done"] == steps
        print(f"{steps} reports: {len(mine)} progress records written in {elapsed:.1f}s")


async def test_progress_refuses_a_report_that_is_not_numbers_and_json(celery_app: App) -> None:
    errors: list[str] = []

    @celery_app.task(name="bad_report")
    async def bad_report() -> None:
        for args, info in [(("x",), {}), ((1, -2), {}), ((1,), {"o": object()})]:
            try:
                current_job().progress(*args, **info)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        try:
            current_job().progress(1, 2, blob="x" * 5000)
        except ValueError as exc:
            errors.append(str(exc))

    async with celery_app:
        await bad_report.delay()
        await burst(celery_app)
    assert len(errors) == 4
    assert "expected a number >= 0" in errors[0]
    assert "total" in errors[1]
    assert "plain JSON" in errors[2]
    assert "more than 4096" in errors[3]


async def test_a_group_handle_answers_in_one_read_and_as_members_finish(celery_app: App) -> None:
    add, boom = t(celery_app, "add"), t(celery_app, "boom")
    gate = asyncio.Event()

    @celery_app.task(name="slow")
    async def slow(x: int) -> int:
        await gate.wait()
        return x

    async with celery_app, running_worker(celery_app, concurrency=8):
        handle = await group([add.s(1, 1), slow.s(5), boom.s(1), add.s(2, 2)]).delay()
        assert handle.id is not None
        assert handle.ids == [f"{handle.id}.{i}" for i in range(4)]
        backend = await celery_app.result_backend()
        reads = 0
        real_read = backend.read

        async def counted(job_id: str) -> Any:
            nonlocal reads
            reads += 1
            return await real_read(job_id)

        backend.read = counted  # type: ignore[method-assign]
        deadline = time.monotonic() + 10
        while await handle.completed_count() < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert await handle.failed()
        assert not await handle.ready()
        assert not await handle.successful()
        assert reads == 0  # states came from one read of <group id>.*, never one per member
        order = []
        gate_opened = False
        async for done in handle.as_completed(timeout=10):
            order.append(done.id)
            if not gate_opened and len(order) == 3:
                gate.set()
                gate_opened = True
        assert order[-1] == handle.ids[1]  # the slow member came last
        assert sorted(order) == sorted(handle.ids)
        assert await handle.ready()
        assert await handle.completed_count() == 3
        assert await handle.results[1].get() == 5
        backend.read = real_read  # type: ignore[method-assign]
