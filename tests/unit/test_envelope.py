import json
import time

import pytest

from jsqueue.envelope import Envelope, decode, encode, new_job_id
from jsqueue.errors import DecodeError, SerializeError, SignatureError

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
        (b'{"v": 1, "task": "t"}', "missing or malformed"),
        (b'{"v": 1, "id": "x", "task": "t", "args": 5}', "args must be a list"),
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
