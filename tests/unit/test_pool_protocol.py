"""The pool channel's frames and job blobs, without processes: every message survives the trip,
and what is not a message or a job is refused with a clear error."""

import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jsqueue.pools import protocol
from jsqueue.pools.protocol import (
    ChildJob,
    Done,
    Ready,
    Report,
    RunJob,
    StartFailed,
    Stop,
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def trip(message: Any) -> Any:
    data = protocol.frame(message)
    header = data[: protocol.header_size()]
    assert protocol.body_size(header) == len(data) - protocol.header_size()
    return protocol.parse(data[protocol.header_size() :])


@pytest.mark.parametrize(
    "message",
    [
        Ready(7),
        StartFailed("ImportError: x", "Traceback..."),
        RunJob("j1", "app.add", b"\x00body"),
        Stop(),
        Report("j1", "progress", b"blob"),
        Done("j1", ok=True, value=b"v", rss_mb=None, duration=0.5),
        Done("j2", ok=False, error=None, error_type="app.Oops", traceback="tb", rss_mb=31.5),
    ],
)
def test_every_message_survives_its_frame(message: Any) -> None:
    assert trip(message) == message
    assert type(trip(message)) is type(message)


@given(args=st.lists(JSON, max_size=4), kwargs=st.dictionaries(st.text(), JSON, max_size=4))
def test_a_json_job_travels_as_plain_pickle_and_loads_equal(args: list[Any], kwargs: Any) -> None:
    job = ChildJob("j", "app.t", tuple(args), kwargs, attempt=3, headers={"h": "v"}, plain=True)
    body = protocol.dump_job(job)
    assert b"cloudpickle" not in body
    assert protocol.load_job(body) == job


def test_a_job_that_plain_pickle_cannot_carry_falls_back_to_cloudpickle() -> None:
    job = ChildJob("j", "app.t", (lambda x: x + 1,), {}, plain=True)
    loaded = protocol.load_job(protocol.dump_job(job))
    assert loaded.args[0](1) == 2


def test_a_cloudpickle_job_keeps_its_values() -> None:
    class Local:
        def __init__(self, n: int) -> None:
            self.n = n

    loaded = protocol.load_job(protocol.dump_job(ChildJob("j", "app.t", (Local(4),), {})))
    assert loaded.args[0].n == 4


@pytest.mark.parametrize("value", [None, True, 3, 2.5, "s", b"b"])
def test_scalars_pickle_plainly_and_load_equal(value: Any) -> None:
    blob = protocol.dump_blob(value, what="a scalar")
    assert protocol.load_blob(blob) == value
    assert type(protocol.load_blob(blob)) is type(value)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"not a pickle", "undecodable frame"),
        (pickle.dumps({"a": 1}), "unexpected dict"),
        (pickle.dumps(()), "unexpected tuple"),
        (pickle.dumps(("0", 1)), "unexpected tuple"),
        (pickle.dumps((99, 1)), "unknown message type 99"),
        (pickle.dumps((-1,)), "unknown message type -1"),
        (pickle.dumps((0, 1, 2, 3)), "a Ready with the wrong fields"),
        (pickle.dumps((5,)), "a Done with the wrong fields"),
    ],
)
def test_what_is_no_message_is_refused_by_name(payload: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        protocol.parse(payload)


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (pickle.dumps(("j", "t")), "not the fields of a job"),
        (pickle.dumps(tuple(range(40))), "not the fields of a job"),
        (pickle.dumps({"job": 1}), "a dict instead of a job"),
    ],
)
def test_a_blob_that_holds_no_job_is_refused(blob: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        protocol.load_job(blob)
