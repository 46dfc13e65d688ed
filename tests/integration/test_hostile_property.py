"""Generated hostile messages against one real worker process: every message ends settled.

Each example publishes a batch of generated bodies and delivery headers (ids, field types, sizes,
nesting, links, chords) straight to the queue subject, as a careless or hostile producer could.
Then a valid job must run, and within a bound every stored message must be settled: copied to
the dead-letter stream, or holding a final result record, with the queue empty and the worker
process still serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jsqueue import App
from jsqueue.envelope import decode
from jsqueue.errors import DecodeError, PayloadTooLarge
from jsqueue.services import dlq as dead_letters
from jsqueue.testing import Process, unique_prefix
from jsqueue.wire.server import NatsServer

from .support import ROOT

pytestmark = pytest.mark.slow

PREFIX = unique_prefix()
#: how long a batch may take to settle, far above what it needs (a few retries of 0.1 s)
SETTLE_WITHIN = 20.0

ids = st.one_of(
    st.sampled_from(["ok", "a.b", "x/y=z", "order:1", "*", "a..b", "", " ", "\n", "é"]),
    st.from_regex(r"[A-Za-z0-9_=/-]{1,30}", fullmatch=True),
    st.text(max_size=40),
    st.integers(),
    st.none(),
    st.just("i" * 5_000),
)
tasks = st.one_of(
    st.sampled_from(["add", "add", "fails", "flaky", "no.such", ""]),
    st.text(max_size=20),
    st.integers(),
    st.just("t" * 300),
)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


values = st.one_of(
    st.integers(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.sampled_from([1, 50, 900, 3_000]).map(nested),
    st.sampled_from([1_000, 100_000]).map(lambda n: "p" * n),
)
numbers = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(time.time() - 3600),
    st.just(time.time() + 3600),
    st.text(max_size=5),
    st.booleans(),
)
signatures = st.one_of(
    st.fixed_dictionaries({"task": tasks, "args": st.lists(values, max_size=2)}),
    st.fixed_dictionaries(
        {
            "task": st.just("add"),
            "args": st.just([5]),
            "options": st.dictionaries(
                st.sampled_from(["job_id", "queue", "countdown", "colour"]), ids, max_size=2
            ),
        }
    ),
    st.text(max_size=5),
    st.integers(),
)
legal_ids = st.from_regex(r"[A-Za-z0-9_=-]{1,20}(\.[A-Za-z0-9_/-]{1,8})?", fullmatch=True)
#: fields a careless producer gets wrong, each with what it might send
corruptions = {
    "v": st.sampled_from([2, "1", None, 1.5]),
    "id": ids,
    "task": tasks,
    "args": st.one_of(st.lists(values, max_size=3), values, st.none()),
    "kwargs": st.one_of(st.dictionaries(st.text(max_size=5), values, max_size=2), values),
    "queue": st.sampled_from(["other", "bad queue", 7, ""]),
    "created": numbers,
    "eta": numbers,
    "expires": numbers,
    "parent_id": ids,
    "link": st.one_of(st.lists(signatures, max_size=2), signatures),
    "chord": st.one_of(
        st.fixed_dictionaries({"id": ids, "index": st.integers(-1, 3), "size": st.integers(-1, 3)}),
        st.text(max_size=5),
    ),
    "headers": st.one_of(st.dictionaries(st.text(max_size=5), values, max_size=2), values),
    "pickle": st.text(max_size=10),
    "unknown": values,
}


@st.composite
def envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A job a producer means well with (a third stay valid), with a few fields gone wrong."""
    doc: dict[str, Any] = {
        "v": 1,
        "id": draw(legal_ids),
        "task": draw(st.sampled_from(["add", "add", "add", "fails", "flaky", "no.such"])),
        "args": draw(st.sampled_from([[1, 2], ["a", "b"], [[1], [2]], [1], []])),
    }
    wrong = draw(st.lists(st.sampled_from(sorted(corruptions)), max_size=2, unique=True))
    for name in wrong:
        doc[name] = draw(corruptions[name])
    return doc


def to_bytes(doc: object) -> bytes:
    try:
        return json.dumps(doc).encode()
    except (ValueError, RecursionError):
        return b"{}"


bodies = st.one_of(
    envelopes().map(to_bytes),
    envelopes().map(to_bytes),
    envelopes().map(to_bytes),
    st.binary(max_size=64),
    st.sampled_from([b"[" * 100_000, b"null", b"[]", b'"x"', b'{"v": 1', b"\xff\xfe"]),
)
header_text = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), max_size=30
)
delivery_headers = st.one_of(
    st.none(),
    st.fixed_dictionaries({"Nats-Msg-Id": header_text.filter(bool)}),
    st.fixed_dictionaries({"X-Anything": header_text}),
)
messages = st.tuples(bodies, delivery_headers)


@pytest.fixture(scope="module")
def worker(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """One worker process for every example; stopped by PID at the end, even on failure."""
    proc = Process.jsqueue(
        "worker",
        "-A",
        "tests.apps.hostileapp:app",
        "--url",
        nats_server.url,
        "-c",
        "16",
        env={"JSQ_TEST_PREFIX": PREFIX},
        cwd=ROOT,
        log_dir=tmp_path_factory.mktemp("hostile"),
        name="worker",
    )
    with proc:
        yield proc


@settings(
    max_examples=int(os.environ.get("JSQ_HOSTILE_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(batch=st.lists(messages, min_size=40, max_size=120))
def test_every_generated_message_ends_settled(
    worker: Process, nats_server: NatsServer, batch: list[tuple[bytes, dict[str, str] | None]]
) -> None:
    asyncio.run(_settles(nats_server.url, batch))
    assert worker.proc is not None
    assert worker.proc.poll() is None, worker.output()[-3000:]


async def _settles(url: str, batch: list[tuple[bytes, dict[str, str] | None]]) -> None:
    app = App("hostile-producer", url=url, prefix=PREFIX, provision=False)
    async with app:
        broker = await app.broker()
        subject = app.settings.queue_subject("default")
        stored: dict[int, bytes] = {}
        for body, headers in batch:
            try:
                ack = await broker.publish(subject, body, headers)
            except PayloadTooLarge:
                continue
            if not ack.duplicate:
                stored[ack.seq] = body
        good = await app.signature("add", 20, 22).delay()
        assert await good.get(timeout=SETTLE_WITHIN) == 42
        deadline = time.monotonic() + SETTLE_WITHIN
        while True:
            info = await broker.streams.consumer("default")
            assert info is not None
            if not info.pending and not info.ack_pending:
                break
            assert time.monotonic() < deadline, f"not settled: {info.ack_pending} unacked"
            await asyncio.sleep(0.05)
        found = await dead_letters.list_letters(broker)
        letters = {x.jobs_seq for x in found}
        if os.environ.get("JSQ_HOSTILE_DEBUG"):
            import collections

            print(len(stored), collections.Counter(x.reason for x in found if x.jobs_seq in stored))
        backend = await app.result_backend()
        for seq, body in stored.items():
            if seq in letters:
                continue
            try:
                env = decode(body, app.settings.secret_key)
            except DecodeError as exc:
                raise AssertionError(
                    f"seq {seq} undecodable ({exc}) and not dead-lettered"
                ) from None
            outcome = await backend.read(env.id)
            assert outcome is not None, f"seq {seq} ({env.id}) has no record and no dead letter"
            assert outcome.state.is_final, f"seq {seq} ({env.id}) is {outcome.state}"
