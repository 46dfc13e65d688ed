"""The wire protocol (docs/protocol.md) held to what jsqueue really does.

What the producer stores in the jobs stream, what the worker writes to the results bucket for
each state and what it stores as dead letters (both formats) are read back raw from the server
and validated against the schemas shipped in ``jsqueue/schemas``. The schema also refuses what a
worker refuses, on a list of hostile envelopes, so that a producer that validates against it
never sends a job that is dead-lettered as malformed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from jsqueue import App, JobState, Reject, Retry, TaskFailed, chain, chord, group
from jsqueue.envelope import decode
from jsqueue.errors import DecodeError, MalformedError
from jsqueue.schemas import NAMES, load
from jsqueue.testing import burst, running_worker, wait_state
from jsqueue.wire.streams import StoredMessage

ENVELOPE = Draft202012Validator(load("envelope"))
RESULT = Draft202012Validator(load("result"))
DEAD_LETTER = Draft202012Validator(load("dead_letter"))
SCHEDULE_AT = re.compile(r"@at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")


def assert_valid(validator: Draft202012Validator, doc: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, f"{json.dumps(doc)[:500]} breaks {validator.schema['title']}: {errors}"


async def stored(app: App, subject: str) -> list[StoredMessage]:
    """Every message on ``subject`` in the jobs stream, as the server stored it."""
    broker = await app.broker()
    return await broker.streams.messages(app.settings.jobs_stream, subject)


async def record(app: App, job_id: str) -> dict[str, Any]:
    """The result record of ``job_id`` exactly as stored (the raw KV value, parsed)."""
    entry = await (await app.result_backend()).store.get(job_id)
    assert entry is not None, f"no result record for {job_id}"
    doc: dict[str, Any] = json.loads(entry.value)
    assert_valid(RESULT, doc)
    return doc


async def letters(app: App) -> dict[str, tuple[dict[str, Any], StoredMessage]]:
    """Every dead letter's record (validated), by job id, with the stored message."""
    broker = await app.broker()
    found = {}
    for msg in await broker.streams.messages(app.settings.dlq_stream, app.settings.dlq_subjects):
        if msg.headers.get("Jsq-Dead-Letter-Format") == "body":
            assert "Jsq-Dead-Letter" not in msg.headers
            meta = json.loads(msg.data.partition(b"\n")[0])
        else:
            meta = json.loads(msg.headers["Jsq-Dead-Letter"])
        assert_valid(DEAD_LETTER, meta)
        assert msg.headers["Nats-Msg-Id"] == f"dlq.{meta['jobs_seq']}"
        assert msg.subject == app.settings.dlq_subject(meta["queue"])
        found[meta["job_id"]] = (meta, msg)
    return found


def test_the_schemas_are_draft_2020_12_and_load_from_the_package() -> None:
    assert NAMES == ("envelope", "result", "dead_letter")
    for name in NAMES:
        schema = load(name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        Draft202012Validator.check_schema(schema)
    with pytest.raises(ValueError, match="no schema named 'nope'"):
        load("nope")


async def test_what_the_producer_stores_matches_the_envelope_schema(jsq_app: App) -> None:
    @jsq_app.task(name="add")
    async def add(x: int, y: int) -> int:
        return x + y

    @jsq_app.task(name="tsum")
    async def tsum(values: list[int]) -> int:
        return sum(values)

    s = jsq_app.settings
    async with jsq_app:
        plain = await add.delay(2, 3)
        before = time.time()
        optioned = await add.apply_async(
            args=(1, 2), job_id="order-7.try/a=1_b", headers={"trace": "t-1"}, expires=60
        )
        later = await add.apply_async(args=(1, 1), countdown=3600, job_id="later-1")
        steps = await chain(add.s(1, 2), add.s(10), add.s(100)).delay()
        total = await chord(group(add.s(i, i) for i in range(3)), tsum.s()).delay()
        nested = (add.s(1, 1) | group(add.s(1), add.s(2)) | tsum.s()).on_error(add.s(0))
        await nested.delay()
        queued = await stored(jsq_app, s.queue_subject("default"))
        [scheduled] = await stored(jsq_app, s.schedule_subject("default", "later-1"))

    docs = [json.loads(m.data) for m in queued]
    for msg, doc in zip(queued, docs, strict=True):
        assert_valid(ENVELOPE, doc)
        assert msg.headers["Nats-Msg-Id"] == doc["id"]
        assert "Nats-Schedule" not in msg.headers
        assert doc["v"] == 1
        assert doc["queue"] == "default"
    by_id = {doc["id"]: doc for doc in docs}
    # the delayed job waits elsewhere; one message for each canvas's first job
    assert len(docs) == 1 + 1 + 1 + 3 + 1
    assert by_id[plain.id]["args"] == [2, 3]
    assert by_id[plain.id]["kwargs"] == {}
    assert abs(by_id[plain.id]["created"] - before) < 5
    shown = by_id[optioned.id]
    assert shown["headers"] == {"trace": "t-1"}
    assert shown["expires"] == pytest.approx(shown["created"] + 60)

    first = next(d for d in docs if "link" in d and "on_error" not in d)
    [after] = first["link"]  # the next step, with the one after it in its own link
    assert after["args"] == [10]
    assert after["link"][0]["args"] == [100]
    assert after["link"][0]["options"]["job_id"] == steps.id  # every step's id is fixed
    opening = next(d for d in docs if "on_error" in d)  # the nested canvas's first job
    [following] = opening["link"]  # a group followed by a step: a chord node
    assert [m["args"] for m in following["header"]] == [[1], [2]]
    assert following["body"]["task"] == "tsum"
    assert following["body"]["on_error"] == opening["on_error"]  # one error callback for all
    assert opening["on_error"][0]["once"] is True
    members = sorted((d for d in docs if "chord" in d), key=lambda d: d["chord"]["index"])
    assert [m["chord"] for m in members] == [
        {"id": total.id, "index": i, "size": 3} for i in range(3)
    ]

    assert later.id == "later-1"
    doc = json.loads(scheduled.data)
    assert_valid(ENVELOPE, doc)
    headers = scheduled.headers
    assert headers["Nats-Msg-Id"] == "later-1"
    assert headers["Nats-Schedule-Target"] == s.queue_subject("default")
    at = SCHEDULE_AT.fullmatch(headers["Nats-Schedule"])
    assert at, headers["Nats-Schedule"]
    fires = datetime.fromisoformat(at.group(1)).timestamp()
    assert 0 <= fires - doc["eta"] < 0.001  # whole milliseconds, rounded up: never early


async def test_a_pickled_envelope_is_signed_as_the_document_says(jsq_app: App) -> None:
    jsq_app.configure(secret_key="s3cret")

    @jsq_app.task(name="pickled", serializer="cloudpickle")
    async def pickled(value: object) -> None: ...

    async with jsq_app:
        job = await pickled.delay({1, 2})
        [msg] = await stored(jsq_app, jsq_app.settings.queue_subject("default"))
    doc = json.loads(msg.data)
    assert_valid(ENVELOPE, doc)
    assert "args" not in doc
    assert "kwargs" not in doc
    body = base64.b64decode(doc["pickle"])
    mac = hmac.new(b"s3cret", f"{job.id}\0pickled".encode(), hashlib.sha256)
    mac.update(b"\0" + body)
    assert doc["sig"] == mac.hexdigest()


async def test_final_records_and_dead_letters_match_their_schemas(jsq_app: App) -> None:
    @jsq_app.task(name="add")
    async def add(x: int, y: int) -> int:
        return x + y

    @jsq_app.task(name="boom")
    async def boom() -> None:
        raise ValueError("no good")

    @jsq_app.task(name="refuse")
    async def refuse() -> None:
        raise Reject("not for us")

    async with jsq_app:
        broker = await jsq_app.broker()
        queue = jsq_app.settings.queue_subject("default")
        ok = await add.delay(2, 3)
        failed = await boom.apply_async(job_id="boom-1")
        rejected = await refuse.apply_async(job_id="refuse-1")
        after = await chain(boom.s().set(job_id="chain-1"), add.s(1)).delay()
        expired = await add.apply_async(
            args=(1, 1), expires=datetime.now(UTC) - timedelta(seconds=1)
        )
        revoked = await add.delay(3, 3)
        assert await revoked.revoke()
        revoked_later = await add.delay(4, 4)
        assert await revoked_later.revoke()
        await revoked_later.forget()  # so the worker's own REVOKED record is the one kept
        malformed = {"v": 1, "id": "bad-args", "task": "add", "args": "x"}
        await broker.publish(queue, json.dumps(malformed).encode(), {"Nats-Msg-Id": "bad-args"})
        future = {"v": 2, "id": "v2-job", "task": "add"}
        await broker.publish(queue, json.dumps(future).encode(), {"Nats-Msg-Id": "v2-job"})
        await broker.publish(queue, b"not json", {"Nats-Msg-Id": "bytes-1"})
        illegal = {"v": 1, "id": "order:1", "task": "add"}
        await broker.publish(queue, json.dumps(illegal).encode())  # no Nats-Msg-Id either
        illegal_2 = {"v": 1, "id": "order:2", "task": "add"}
        await broker.publish(queue, json.dumps(illegal_2).encode(), {"Nats-Msg-Id": "order-2"})
        stats = await burst(jsq_app)

        success = await record(jsq_app, ok.id)
        assert (success["state"], success["result"], success["attempts"]) == ("SUCCESS", 5, 1)
        assert success["started"] <= success["finished"]
        failure = await record(jsq_app, failed.id)
        assert (failure["state"], failure["reason"]) == ("FAILURE", "not_retryable")
        assert failure["error"]["type"] == "ValueError"
        assert "no good" in failure["error"]["traceback"]
        dead = await record(jsq_app, rejected.id)
        assert (dead["state"], dead["reason"]) == ("DEAD", "rejected")
        step = await record(jsq_app, after.id)  # the step after a failed one: failed_job shape
        assert step["state"] == "FAILURE"
        assert step["error"]["type"] == "ValueError"
        assert "task" not in step
        assert (await record(jsq_app, expired.id))["state"] == "EXPIRED"
        first_wins = await record(jsq_app, revoked.id)  # revoke() wrote first; the worker's
        assert first_wins["state"] == "REVOKED"  # own REVOKED could not overwrite it
        assert set(first_wins) == {"state", "revoked_at"}
        by_worker = await record(jsq_app, revoked_later.id)
        assert (by_worker["state"], by_worker["why"]) == ("REVOKED", "revoked")
        assert (await record(jsq_app, "bad-args"))["reason"] == "malformed"
        versioned = await record(jsq_app, "v2-job")
        assert (versioned["state"], versioned["reason"]) == ("DEAD", "undecodable")
        assert "envelope version 2 is not understood" in versioned["error"]["message"]
        assert (await record(jsq_app, "order-2"))["reason"] == "malformed"  # its Nats-Msg-Id
        not_json = await record(jsq_app, "bytes-1")  # no id to read: its Nats-Msg-Id
        assert (not_json["state"], not_json["reason"], not_json["task"]) == (
            "DEAD",
            "undecodable",
            "?",
        )
        dead_letters = await letters(jsq_app)
        seq_ids = [job_id for job_id in dead_letters if job_id.startswith("seq-")]
        assert [await jsq_app.result(j).state() for j in seq_ids] == [JobState.PENDING]

    assert stats.succeeded == 1
    [seq_id] = seq_ids
    named = {"boom-1", "refuse-1", "chain-1", "bad-args", "v2-job", "bytes-1", "order-2", seq_id}
    assert set(dead_letters) == named
    meta, msg = dead_letters["boom-1"]
    assert (meta["reason"], meta["task"], meta["attempts"]) == ("not_retryable", "boom", 1)
    assert json.loads(msg.data)["id"] == "boom-1"  # the header format keeps the job as sent
    assert "no good" in meta["traceback"]
    meta, msg = dead_letters["v2-job"]
    assert (meta["reason"], msg.data) == ("undecodable", json.dumps(future).encode())
    meta, _ = dead_letters["bad-args"]
    assert (meta["reason"], meta["error_type"]) == ("malformed", "MalformedError")
    assert "field 'args'" in meta["error_message"]
    meta, _ = dead_letters[seq_id]  # no legal id: listed by its jobs-stream sequence
    assert (meta["reason"], meta["given_id"]) == ("malformed", "order:1")
    assert seq_id == f"seq-{meta['jobs_seq']}"
    assert dead_letters["order-2"][0]["given_id"] == "order:2"


async def test_a_dead_letter_in_the_body_format(jsq_app: App) -> None:
    @jsq_app.task(name="fails")
    def fails(blob: str) -> None:
        raise ValueError("no good")

    async with jsq_app:
        broker = await jsq_app.broker()
        doc = {"v": 1, "id": "big", "task": "fails", "args": [""]}
        payload = json.dumps(doc).encode()  # filled up to a few bytes below max_payload
        blob = b"f" * (broker.max_payload - len(payload) - 60)
        payload = payload.replace(b'[""]', b'["' + blob + b'"]')
        assert_valid(ENVELOPE, json.loads(payload))
        queue = jsq_app.settings.queue_subject("default")
        await broker.publish(queue, payload, {"Nats-Msg-Id": "big"})
        await burst(jsq_app)
        found = await letters(jsq_app)
        with pytest.raises(TaskFailed, match="no good"):
            await jsq_app.result("big").get(timeout=5)
    meta, msg = found["big"]
    assert msg.headers["Jsq-Dead-Letter-Format"] == "body"
    assert meta["payload_truncated"] is True
    assert meta["payload_size"] == len(payload)
    assert meta["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    kept = msg.data.partition(b"\n")[2]
    assert payload.startswith(kept)
    assert 0 < len(kept) < len(payload)


async def test_progress_records_match_the_result_schema(jsq_app: App) -> None:
    go = asyncio.Event()

    @jsq_app.task(name="slow", track_started=True)
    async def slow() -> str:
        await go.wait()
        return "done"

    @jsq_app.task(name="later")
    async def later() -> None:
        raise Retry(delay=60)

    async with jsq_app, running_worker(jsq_app):
        running = await slow.delay()
        retrying = await later.delay()
        await wait_state(running, JobState.STARTED)
        started = await record(jsq_app, running.id)
        await wait_state(retrying, JobState.RETRY)
        retry = await record(jsq_app, retrying.id)
        go.set()
        assert await running.get(timeout=5) == "done"
    assert (started["task"], started["attempts"]) == ("slow", 1)
    assert "alone" not in started
    assert retry["retry_at"] - retry["at"] == pytest.approx(60, abs=1)
    assert retry["error"]["type"] == "Retry"


# -- what a worker refuses, the schema refuses ------------------------------------------------

LEGAL = {"v": 1, "id": "ok", "task": "add", "args": [1, 2]}
ILLEGAL_IDS = ["x" * 201, "has:colon", "has space", "*", "a..b", "", ".lead", "trail.", "ok\n"]
HOSTILE: list[dict[str, Any]] = [
    *({**LEGAL, "id": job_id} for job_id in ILLEGAL_IDS),
    {**LEGAL, "id": 7},
    {"v": 1, "task": "add"},
    {"v": 1, "id": "ok"},
    {**LEGAL, "task": ""},
    {**LEGAL, "task": "t" * 201},
    {**LEGAL, "task": "tab\tin"},
    {**LEGAL, "v": 2},
    {**LEGAL, "v": "1"},
    {k: v for k, v in LEGAL.items() if k != "v"},
    {**LEGAL, "queue": "a.b"},
    {**LEGAL, "queue": "q" * 65},
    {**LEGAL, "queue": "default\n"},
    {**LEGAL, "task": "add\n"},
    {**LEGAL, "args": "x"},
    {**LEGAL, "kwargs": []},
    {**LEGAL, "created": "now"},
    {**LEGAL, "eta": "soon"},
    {**LEGAL, "expires": True},
    {**LEGAL, "parent_id": "a:b"},
    {**LEGAL, "link": {"task": "add"}},
    {**LEGAL, "link": [{"args": [1]}]},
    {**LEGAL, "link": [{"task": "add", "options": {"priority": 9}}]},  # off the scale
    {**LEGAL, "link": [{"task": "add", "options": {"urgency": 1}}]},  # an unknown option
    {**LEGAL, "priority": 4},
    {**LEGAL, "priority": "high"},
    {**LEGAL, "priority": True},
    {**LEGAL, "unique_key": "has space"},
    {**LEGAL, "unique_key": 7},
    {**LEGAL, "link": [{"task": "add", "options": {"countdown": "soon"}}]},
    {**LEGAL, "link": [{"task": "add", "immutable": "yes"}]},
    {**LEGAL, "link": [{"task": "add"}] * 1001},
    {**LEGAL, "chord": {"id": "c", "index": 0}},
    {**LEGAL, "chord": {"id": "c:1", "index": 0, "size": 1}},
    {**LEGAL, "chord": {"id": "c", "index": -1, "size": 1}},
    {**LEGAL, "headers": {"a": 1}},
    {**LEGAL, "pickle": "gAR9lC4="},  # unsigned
    {**LEGAL, "link": [{"group": {"task": "add"}}]},
    {**LEGAL, "link": [{"header": [{"task": "add"}], "body": {"task": "tsum"}}]},  # no id
    {**LEGAL, "link": [{"id": "c", "header": [{"task": "add"}], "body": {"group": 1}}]},
    {**LEGAL, "on_error": [{"group": [{"task": "add"}]}]},
    {**LEGAL, "on_error": [{"task": "h", "once": "yes"}]},
    {**LEGAL, "on_error": [{"task": "h", "once": True}]},  # a claimed errback needs its job id
    {**LEGAL, "link": [{"task": "add", "options": {"eta": "tomorrow"}}]},
]

ACCEPTED: list[dict[str, Any]] = [
    LEGAL,
    {"v": 1, "id": "a.b/c=d_e-F9", "task": "tâche.ajouter"},
    {**LEGAL, "id": "x" * 200, "queue": "Q_1-a", "eta": None, "expires": 1.5, "chord": None},
    {**LEGAL, "unknown": {"a newer producer": "may add fields"}},
    {**LEGAL, "link": [{"task": "add", "options": {"job_id": "n.2", "queue": None}}]},
    {**LEGAL, "chord": {"id": "c", "index": 1, "size": 2}, "headers": {"k": "v"}},
    {
        **LEGAL,
        "link": [
            {
                "task": "add",
                "options": {"job_id": "n.1", "eta": 1764612371.5, "expires_at": 1764612400},
                "link": [
                    {
                        "id": "c.1",
                        "header": [{"group": [{"task": "add"}, {"task": "add"}]}],
                        "body": {"task": "tsum", "options": {"job_id": "c.1"}},
                    }
                ],
                "on_error": [{"task": "h", "once": True, "options": {"job_id": "h.1"}}],
            }
        ],
        "on_error": [{"task": "h", "args": [1]}],
    },
    {**LEGAL, "link": [{"id": "c.2", "header": [], "body": {"task": "tsum"}}]},
    {**LEGAL, "priority": 3, "link": [{"task": "add", "options": {"priority": 0}}]},
    {**LEGAL, "unique_key": "report.42"},
]


@pytest.mark.parametrize("doc", HOSTILE, ids=lambda d: json.dumps(d)[:60])
def test_the_schema_refuses_what_a_worker_refuses(doc: dict[str, Any]) -> None:
    assert not ENVELOPE.is_valid(doc)
    with pytest.raises(DecodeError) as refused:  # what the worker decodes every message with
        decode(json.dumps(doc).encode(), secret_key=b"k")
    if doc.get("v") == 1 and "pickle" not in doc:
        assert isinstance(refused.value, MalformedError)  # dead-lettered as 'malformed'


def test_a_canvas_nested_too_deep_is_refused_which_the_schema_cannot_say() -> None:
    deep: dict[str, Any] = {"task": "add"}
    for _ in range(40):
        deep = {"group": [deep]}
    doc = {**LEGAL, "link": [deep]}
    assert ENVELOPE.is_valid(doc)  # JSON Schema has no depth limit: docs/protocol.md says it
    with pytest.raises(MalformedError, match="nested deeper than 32 levels"):
        decode(json.dumps(doc).encode())


@pytest.mark.parametrize("doc", ACCEPTED, ids=lambda d: json.dumps(d)[:60])
def test_the_schema_accepts_what_a_worker_runs(doc: dict[str, Any]) -> None:
    assert_valid(ENVELOPE, doc)
    decode(json.dumps(doc).encode())
