import json
import re
import time

import pytest

from jsqueue.envelope import Envelope, decode, encode, new_job_id, peek, to_json
from jsqueue.errors import DecodeError, MalformedError, SerializeError, SignatureError

KEY = b"k" * 32

# Unpickling this would create a file: the tests prove it never happens.
SIDE_EFFECT_PICKLE = (
    b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94"
)


def make(**kw: object) -> Envelope:
    fields: dict[str, object] = {"id": new_job_id(), "task": "t.add", "args": (1, 2)}
    fields.update(kw)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_json_round_trip_keeps_every_field() -> None:
    env = make(
        kwargs={"z": [1, "x"]},
        queue="math",
        created=1.5,
        eta=2.5,
        expires=3.5,
        parent_id="p",
        root_id="r",
        headers={"h": "v"},
    )
    assert decode(encode(env)) == env


def test_json_envelope_is_readable_and_versioned() -> None:
    doc = json.loads(encode(make()))
    assert doc["v"] == 1
    assert doc["args"] == [1, 2]
    assert doc["task"] == "t.add"


def test_unknown_fields_are_ignored() -> None:
    doc = json.loads(encode(make()))
    doc["future_field"] = {"x": 1}
    assert decode(json.dumps(doc).encode()).task == "t.add"


def test_non_json_arguments_are_a_clear_error() -> None:
    with pytest.raises(SerializeError, match=r"cannot be sent as JSON.*cloudpickle"):
        encode(make(args=(object(),)))


def test_signed_pickle_round_trip() -> None:
    env = make(args=({1, 2}, b"bytes"), serializer="cloudpickle")
    back = decode(encode(env, KEY), KEY)
    assert back.args == ({1, 2}, b"bytes")
    assert back.serializer == "cloudpickle"


def test_pickle_signed_with_another_key_is_refused() -> None:
    data = encode(make(serializer="cloudpickle"), KEY)
    with pytest.raises(SignatureError, match="wrong signature"):
        decode(data, b"other" * 8)


def test_signature_is_bound_to_job_id_and_task() -> None:
    doc = json.loads(encode(make(serializer="cloudpickle"), KEY))
    doc["task"] = "t.other"
    with pytest.raises(SignatureError, match="wrong signature"):
        decode(json.dumps(doc).encode(), KEY)


@pytest.mark.parametrize("sig", [None, "", "00" * 32])
def test_unsigned_or_forged_pickle_is_never_unpickled(
    sig: str | None, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    calls: list[str] = []
    monkeypatch.setattr("os.system", lambda cmd: calls.append(cmd))
    doc = {"v": 1, "id": "j", "task": "t", "pickle": base64.b64encode(SIDE_EFFECT_PICKLE).decode()}
    if sig is not None:
        doc["sig"] = sig
    with pytest.raises(SignatureError):
        decode(json.dumps(doc).encode(), KEY)
    assert calls == []


def test_pickle_without_app_key_is_refused() -> None:
    data = encode(make(serializer="cloudpickle"), KEY)
    with pytest.raises(SignatureError, match="no secret_key"):
        decode(data, None)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xff\xfe garbage", "not JSON"),
        (b'{"v": 1, "id": "x"', "not JSON"),
        (b"[1, 2]", "not an envelope"),
        (b'{"v": 99, "id": "x", "task": "t"}', "version 99"),
        (b'{"v": 1, "task": "t"}', "field 'id' is missing"),
        (b'{"v": 1, "id": "x", "task": "t", "args": 5}', "field 'args': expected a list"),
        (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
    ],
)
def test_bad_payloads_raise_decode_error_keeping_the_bytes(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match) as info:
        decode(data)
    assert info.value.raw == data


def test_job_ids_are_unique_and_sort_by_time() -> None:
    first = new_job_id()
    time.sleep(0.002)
    later = [new_job_id() for _ in range(1000)]
    assert len(set(later)) == 1000
    assert all(first < other for other in later)


MALFORMED = [
    ({"id": "x" * 10_000}, "field 'id'"),
    ({"id": "has:colon and space"}, "field 'id'"),
    ({"id": "*"}, "field 'id'"),
    ({"id": "a..b"}, "field 'id'"),
    ({"id": ""}, "field 'id'"),
    ({"id": "order:1"}, "field 'id'"),
    ({"id": "trailing\n"}, "field 'id'"),
    ({"id": 42}, "field 'id'"),
    ({"task": ""}, "field 'task'"),
    ({"task": "t" * 1_000_000}, "field 'task'"),
    ({"task": "bell\x07"}, "control characters"),
    ({"task": ["list"]}, "field 'task'"),
    ({"queue": "no spaces"}, "field 'queue'"),
    ({"queue": 7}, "field 'queue'"),
    ({"kwargs": [1]}, "field 'kwargs'"),
    ({"eta": "soon"}, "field 'eta'"),
    ({"expires": "soon"}, "field 'expires'"),
    ({"expires": True}, "field 'expires'"),
    ({"expires": float("nan")}, "field 'expires'"),
    ({"created": None}, "field 'created'"),
    ({"parent_id": "a b"}, "field 'parent_id'"),
    ({"root_id": 5}, "field 'root_id'"),
    ({"replay_of": ""}, "field 'replay_of'"),
    ({"link": "abc"}, "field 'link'"),
    ({"link": [42]}, "field 'link[0]'"),
    ({"link": [{"task": "t", "options": {"job_id": "a:b"}}]}, "field 'link[0].options.job_id'"),
    ({"link": [{"task": "t", "options": {"eta": "later"}}]}, "field 'link[0].options.eta'"),
    ({"link": [{"task": "t", "options": {"colour": 1}}]}, "unknown option"),
    ({"link": [{"task": "t", "args": {}}]}, "field 'link[0].args'"),
    ({"link": [{"task": "t", "immutable": "yes"}]}, "immutable"),
    ({"chord": "nochord"}, "field 'chord'"),
    ({"chord": {"id": "c", "index": 3, "size": 3}}, "field 'chord.index'"),
    ({"chord": {"id": "c", "index": 0, "size": 0}}, "field 'chord.size'"),
    ({"chord": {"id": "c:1", "index": 0, "size": 1}}, "field 'chord.id'"),
    ({"chord": {"id": "c", "index": True, "size": 2}}, "field 'chord.index'"),
    ({"headers": {"a": 1}}, "field 'headers'"),
    ({"headers": "x"}, "field 'headers'"),
    ({"link": [{"task": "t", "options": {"countdown": -1}}]}, "at least 0"),
]


@pytest.mark.parametrize("version", [True, 1.0, "1", 2, None])
def test_only_the_integer_1_is_version_1(version: object) -> None:
    with pytest.raises(DecodeError, match="is not understood by this worker"):
        decode(json.dumps({"v": version, "id": "x", "task": "t"}).encode())


@pytest.mark.parametrize(("change", "match"), MALFORMED)
def test_a_field_of_the_wrong_type_or_value_is_malformed(
    change: dict[str, object], match: str
) -> None:
    doc = {"v": 1, "id": "ok", "task": "t", "args": [], "kwargs": {}, **change}
    data = json.dumps(doc).encode()
    with pytest.raises(MalformedError, match=re.escape(match)) as info:
        decode(data)
    assert info.value.raw == data
    assert len(str(info.value)) < 400  # a hostile value is quoted short


def test_unknown_fields_are_ignored_and_good_fields_kept() -> None:
    doc = {
        "v": 1,
        "id": "a.b/c=d_e-f",
        "task": "m.t",
        "future_field": {"x": 1},
        "link": [{"task": "m.next", "args": [1], "options": {"job_id": "n1", "countdown": 2}}],
        "chord": {"id": "c1", "index": 1, "size": 2},
        "expires": 1e10,
    }
    env = decode(json.dumps(doc).encode())
    assert (env.id, env.task, env.expires) == ("a.b/c=d_e-f", "m.t", 1e10)
    assert env.link[0]["options"]["job_id"] == "n1"
    assert env.chord == {"id": "c1", "index": 1, "size": 2}


def test_peek_gives_only_legal_ids_and_names() -> None:
    assert peek(b'{"id": "ok", "task": "t"}') == ("ok", "t")
    assert peek(b'{"id": "no:colon", "task": "' + b"t" * 500 + b'"}') == (None, None)
    assert peek(b"[" * 100_000) == (None, None)


def test_a_deeply_nested_value_is_a_serialize_error() -> None:
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(SerializeError, match="nests too deeply"):
        to_json({"result": deep}, what="the return value of t")
