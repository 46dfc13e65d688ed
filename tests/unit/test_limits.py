"""The limits' arithmetic and their input rules, without a server."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jsqueue.errors import ConfigError
from jsqueue.limits import (
    MAX_RATE_PER_SECOND,
    RATE_UNITS,
    check_unique_key,
    default_unique_key,
    live_holders,
    parse_rate,
    reserve,
    slots_of,
)


@pytest.mark.parametrize(
    ("text", "per_second"), [("100/s", 100.0), ("6/m", 0.1), ("36/h", 0.01), (" 2.5 / s ", 2.5)]
)
def test_rates_parse(text: str, per_second: float) -> None:
    assert parse_rate(text).per_second == pytest.approx(per_second)


@given(st.text(max_size=20) | st.integers() | st.none() | st.floats())
def test_any_rate_input_parses_or_is_refused_with_the_rule(text: object) -> None:
    try:
        rate = parse_rate(text)
    except ConfigError as exc:
        message = str(exc)
    else:
        assert isinstance(text, str)
        assert 0 < rate.per_second <= MAX_RATE_PER_SECOND
        assert re.fullmatch(r"\s*[\d.]+\s*/\s*[smh]\s*", text)
        assert rate.per in RATE_UNITS.values()
        return
    assert ("rate" in message and "e.g." in message) or "highest rate" in message


def test_reservations_are_spaced_by_the_interval_whoever_asks() -> None:
    tat, starts = None, []
    for _ in range(5):  # five workers asking at the same instant
        start, tat = reserve(tat, 1000.0, 0.1)
        starts.append(start)
    assert starts == pytest.approx([1000.0, 1000.1, 1000.2, 1000.3, 1000.4])
    # an idle spell gives no credit: the next start is now, not a burst of the time missed
    start, tat = reserve(tat, 2000.0, 0.1)
    assert (start, tat) == (2000.0, pytest.approx(2000.1))


def test_a_holder_entry_counts_whole_positive_slots_only() -> None:
    assert [slots_of(h) for h in ({"n": 3}, {"n": 0}, {"n": -2}, {"n": True}, {"n": "3"}, 5)] == [
        3,
        0,
        0,
        0,
        0,
        0,
    ]


def test_stale_slots_are_free() -> None:
    holders = {"a": {"at": 100.0}, "b": {"at": 90.0}, "c": "junk", "d": {"at": "x"}}
    assert set(live_holders(holders, 105.0, stale=10.0)) == {"a"}


@given(
    st.lists(st.integers() | st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)
def test_the_default_unique_key_is_a_legal_key_and_the_same_for_equal_calls(
    args: list[object], kwargs: dict[str, int]
) -> None:
    key = default_unique_key("t", args, kwargs)
    assert check_unique_key(key) == key
    assert default_unique_key("t", list(args), dict(kwargs)) == key
    assert default_unique_key("other", args, kwargs) != key
