"""The envelope's fast paths give exactly what the plain code gives: the same envelope, or the
same error with the same message.

``reference_decode`` is the straightforward decoder (``json.loads``, every field through
:mod:`jsqueue.fields`, ``Envelope(...)`` with keywords); :func:`jsqueue.envelope.decode` takes
short cuts for the common case and must never differ from it, for any bytes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jsqueue import fields
from jsqueue.config import Settings, shorten
from jsqueue.envelope import Envelope, assemble, decode, encode, to_json
from jsqueue.errors import ConfigError, DecodeError, MalformedError, SerializeError
from jsqueue.services.producer import build_envelope


def reference_decode(data: bytes) -> Envelope:
    """The decoder without short cuts (JSON envelopes only)."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"payload is not JSON: {exc}", raw=data) from None
    except RecursionError:
        raise DecodeError("payload nests JSON too deeply to be read", raw=data) from None
    if not isinstance(doc, dict):
        raise DecodeError("payload is JSON but not an envelope object", raw=data)
    version = doc.get("v")
    if type(version) is not int or version != 1:
        raise DecodeError(
            f"envelope version {shorten(version)} is not understood by this worker "
            "(it reads version 1); upgrade the worker or the producer",
            raw=data,
        )
    get = doc.get
    try:
        job_id = fields.job_id(get("id"))
        task = fields.task_name(get("task"))
        args = get("args", [])
        return Envelope(
            id=job_id,
            task=task,
            args=fields.args(list(args) if isinstance(args, tuple) else args),
            kwargs=fields.kwargs(get("kwargs", {})),
            queue=fields.queue(get("queue", "default")),
            created=fields.number(get("created", 0.0), "created"),
            eta=fields.optional_number(get("eta"), "eta"),
            expires=fields.optional_number(get("expires"), "expires"),
            parent_id=fields.optional_job_id(get("parent_id"), "parent_id"),
            root_id=fields.optional_job_id(get("root_id"), "root_id"),
            link=fields.link(get("link")),
            chord=fields.chord(get("chord")),
            headers=fields.headers(get("headers")),
            serializer="json",
            replay_of=fields.optional_job_id(get("replay_of"), "replay_of"),
            notify=fields.notify(get("notify")),
            args_object=fields.args_object(get("args_object"), job_id),
            on_error=fields.on_error(get("on_error")),
            priority=fields.priority(get("priority")),
            unique_key=fields.optional_job_id(get("unique_key"), "unique_key"),
        )
    except fields.FieldError as exc:
        raise MalformedError(f"envelope is malformed: {exc}", raw=data) from None


def outcome(decoder: Any, data: bytes) -> tuple[str, Any]:
    try:
        env = decoder(data)
    except DecodeError as exc:
        return type(exc).__name__, (str(exc), exc.raw)
    assert type(env) is Envelope
    return "ok", (env, [type(getattr(env, f.name)) for f in dataclasses.fields(env)])


def same(data: bytes) -> None:
    assert outcome(decode, data) == outcome(reference_decode, data)


GOOD = {
    "v": 1,
    "id": "0193a1b2c3d4e5f60718293a4b5c6d7e",
    "task": "app.tasks.add",
    "queue": "default",
    "created": 1733100000.123456,
    "notify": "app.notify.0123456789abcdef",
    "args": [1, "two"],
    "kwargs": {"k": [3]},
}

CHANGES: list[dict[str, Any]] = [
    {},
    {"id": "a.b/c=d_e-f"},
    {"id": "x" * 200},
    {"id": "x" * 201},
    {"id": "é"},
    {"id": "١٢٣"},  # digits, not ASCII ones
    {"id": ""},
    {"id": None},
    {"id": 7},
    {"task": "t" * 200},
    {"task": "t" * 201},
    {"task": ""},
    {"task": "tab\t"},
    {"task": "ünïcode.tâsk"},
    {"task": 5},
    {"queue": "other-q_1"},
    {"queue": "bad queue"},
    {"queue": None},
    {"queue": ["default"]},
    {"created": 0},
    {"created": 5},
    {"created": True},
    {"created": -1.5},
    {"created": 1e308},
    {"created": "1.0"},
    {"created": None},
    {"args": []},
    {"args": {}},
    {"args": "abc"},
    {"args": None},
    {"kwargs": []},
    {"kwargs": None},
    {"notify": "app.notify.other"},
    {"notify": "app.notify."},
    {"notify": "APP.notify.x"},
    {"notify": "$JS.API.STREAM.DELETE.x"},
    {"notify": ["app.notify.x"]},
    {"notify": {"a": 1}},
    {"notify": 1},
    {"eta": 5.5, "expires": 6},
    {"priority": 3},
    {"priority": 9},
    {"priority": True},
    {"headers": {"a": "b"}},
    {"headers": {"a": 1}},
    {"parent_id": "p", "root_id": "r", "replay_of": "o", "unique_key": "u"},
    {"args_object": "args.0193a1b2c3d4e5f60718293a4b5c6d7e"},
    {"args_object": "args.other"},
    {"chord": {"id": "c", "index": 0, "size": 1}},
    {"link": [{"task": "t.next", "args": [1]}]},
    {"on_error": [{"task": "t.err"}]},
    {"future": {"x": 1}},
]


@pytest.mark.parametrize("change", CHANGES, ids=[json.dumps(c)[:40] for c in CHANGES])
def test_fields_decode_as_the_plain_code_does(change: dict[str, Any]) -> None:
    doc = {**GOOD, **change}
    same(json.dumps(doc).encode())
    same(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())
    same(json.dumps({k: v for k, v in doc.items() if k not in change or v is not None}).encode())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"{}",
        b"[]",
        b" {}",
        b'{"v":1,"id":"a","task":"t"} ',
        b'{"v":1,"id":"a","task":"t"}\n',
        b'{"v":1,"id":"a","task":"t"}{}',
        b'{"v":1,"id":"a","task":"t"}x',
        b'\xef\xbb\xbf{"v":1,"id":"a","task":"t"}',
        '{"v":1,"id":"a","task":"t"}'.encode("utf-16"),
        '{"v":1,"id":"a","task":"t"}'.encode("utf-16-le"),
        '{"v":1,"id":"a","task":"t"}'.encode("utf-32-le"),
        b'{"v":1,"id":"a","task":"t\xff"}',
        b'{"v":1,"id":"a","task":"t\xed\xa0\x80"}',  # a lone surrogate: json.loads passes it
        b'{"v":1,"id":"a","task":"t","created":NaN}',
        b'{"v":1,"id":"a","task":"t","created":Infinity}',
        b'{"v":1,"id":"a","task":"t","created":-Infinity}',
        b'{"v":1,"id":"a","task":"t","created":1e999}',
        b'{"v":1,"id":"a","id":"b","task":"t"}',
        b'{"v":1.0,"id":"a","task":"t"}',
        b'{"v":true,"id":"a","task":"t"}',
        b'{"v":1,"id":"a","task":"t","args":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"{" + b'"a":{' * 50_000,
    ],
)
def test_odd_payloads_decode_or_fail_as_the_plain_code_does(data: bytes) -> None:
    same(data)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*GOOD, "eta", "expires", "priority", "headers", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=30),
            st.sampled_from(["default", "app.notify.abc", "abc", "a.b"]),
            st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
        ),
    )
)
def test_generated_documents_decode_as_the_plain_code_does(change: dict[str, Any]) -> None:
    same(json.dumps({**GOOD, **change}).encode())


def test_assemble_builds_the_envelope_the_dataclass_builds() -> None:
    values = {
        "id": "i",
        "task": "t",
        "args": (1,),
        "kwargs": {"a": 1},
        "queue": "q",
        "created": 1.5,
        "eta": 2.0,
        "expires": 3.0,
        "parent_id": "p",
        "root_id": "r",
        "link": ({"task": "n"},),
        "chord": {"id": "c", "index": 0, "size": 1},
        "headers": {"h": "v"},
        "serializer": "cloudpickle",
        "replay_of": "o",
        "notify": "n.notify.x",
        "args_object": "args.i",
        "on_error": ({"task": "e"},),
        "priority": 2,
        "unique_key": "u",
    }
    built = assemble(*values.values())  # type: ignore[arg-type]
    assert type(built) is Envelope
    assert built == Envelope(**values)  # type: ignore[arg-type]
    assert repr(built) == repr(Envelope(**values))  # type: ignore[arg-type]
    assert hash(assemble("i", "t", (), {}, "q", 0.0).id) == hash("i")
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.id = "other"  # type: ignore[misc]
    assert assemble("i", "t", (), {}, "q", 0.0) == Envelope(id="i", task="t", queue="q")


def test_build_envelope_is_the_dataclass_with_its_defaults() -> None:
    s = Settings("t", prefix="t")
    env = build_envelope(
        s, "t.x", [1], None, queue="q", serializer="json", notify="t.notify.a", priority=2
    )
    assert env == Envelope(
        id=env.id,
        task="t.x",
        args=(1,),
        queue="q",
        created=env.created,
        notify="t.notify.a",
        priority=2,
    )
    chained = build_envelope(
        s,
        "t.x",
        queue="q",
        serializer="json",
        link=({"task": "n"},),
        parent_id="p",
        root_id="r",
        chord={"id": "c", "index": 0, "size": 1},
        on_error=({"task": "e"},),
        unique_key="u",
        replay_of="o",
        args_object="args.a",
    )
    assert chained == dataclasses.replace(
        Envelope(id=chained.id, task="t.x", queue="q", created=chained.created),
        link=({"task": "n"},),
        parent_id="p",
        root_id="r",
        chord={"id": "c", "index": 0, "size": 1},
        on_error=({"task": "e"},),
        unique_key="u",
        replay_of="o",
        args_object="args.a",
    )
    with pytest.raises(TypeError, match=r"Envelope.__init__\(\) got an unexpected keyword"):
        build_envelope(s, "t.x", queue="q", serializer="json", colour="red")
    with pytest.raises(TypeError, match="multiple values for keyword argument 'id'"):
        build_envelope(s, "t.x", queue="q", serializer="json", id="x")
    for bad in ("no spaces", "", 7, ["q"]):
        for _ in range(2):  # the queue check remembers what passed, never what failed
            with pytest.raises(ConfigError, match="queue"):
                build_envelope(s, "t.x", queue=bad, serializer="json")  # type: ignore[arg-type]


def test_encode_writes_what_the_json_encoder_writes() -> None:
    env = Envelope(
        id="i",
        task="t",
        args=(1, "é", 1.5, float("inf"), None, True),
        kwargs={"k": {"n": [1]}},
        eta=2.0,
        expires=3.0,
        parent_id="p",
        root_id="r",
        link=({"task": "n"},),
        chord={"id": "c", "index": 0, "size": 1},
        headers={"h": "v"},
        replay_of="o",
        notify="n.notify.x",
        args_object="args.i",
        on_error=({"task": "e"},),
        priority=2,
        unique_key="u",
    )
    doc = {"v": 1, "id": "i", "task": "t", "queue": "default", "created": 0.0}
    for name in (
        "eta",
        "expires",
        "parent_id",
        "root_id",
        "chord",
        "headers",
        "replay_of",
        "notify",
        "args_object",
        "priority",
        "unique_key",
    ):
        doc[name] = getattr(env, name)
    doc.update(link=list(env.link), on_error=list(env.on_error), args=list(env.args))
    doc["kwargs"] = env.kwargs
    plain = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode(doc).encode()
    assert encode(env) == plain
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(SerializeError, match=r"Circular reference detected"):
        encode(dataclasses.replace(env, args=(circular,)))
    with pytest.raises(SerializeError, match=r"Circular reference detected"):
        to_json({"a": circular}, what="x")  # and again: nothing is left marked
    assert to_json({"a": [1]}, what="x") == b'{"a":[1]}'
    with pytest.raises(SerializeError, match=r"the arguments of t cannot be sent as JSON"):
        encode(dataclasses.replace(env, args=(object(),)))


def test_documents_written_from_many_threads_at_once_are_never_taken_for_circular() -> None:
    from concurrent.futures import ThreadPoolExecutor

    shared = [list(range(50))] * 50  # the same list many times: shared, not circular
    doc = {"a": shared, "b": shared}
    expected = json.dumps(doc, separators=(",", ":")).encode()
    with ThreadPoolExecutor(8) as pool:
        written = list(pool.map(lambda _: to_json(doc, what="x"), range(400)))
    assert set(written) == {expected}
