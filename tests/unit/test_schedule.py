from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jsqueue import App, ConfigError
from jsqueue.schedule import Cron, Every, ticks_between, to_fire

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz: ZoneInfo = BERLIN) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def local(timestamp: int, tz: ZoneInfo = BERLIN) -> str:
    return datetime.fromtimestamp(timestamp, tz).isoformat()


def test_intervals_are_anchored_to_the_epoch_and_never_drift() -> None:
    every = Every(30)
    assert every.next_after(1_000_000_005.3) == 1_000_000_020
    assert every.next_after(1_000_000_020) == 1_000_000_050
    ticks = ticks_between(every, 0, 30 * 10_000)
    assert ticks == list(range(30, 30 * 10_000 + 1, 30))


def test_cron_fires_in_its_time_zone() -> None:
    nightly = Cron("0 3 * * *", "Europe/Berlin")
    tick = nightly.next_after(at("2026-07-01T12:00:00"))
    assert local(tick) == "2026-07-02T03:00:00+02:00"
    winter = nightly.next_after(at("2026-12-01T12:00:00"))
    assert local(winter) == "2026-12-02T03:00:00+01:00"


def test_dst_spring_forward_runs_a_skipped_time_once_after_the_gap() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day.
    # cronsim, like Debian cron, runs it at the first moment after the gap.
    half_past_two = Cron("30 2 * * *", "Europe/Berlin")
    ticks = ticks_between(half_past_two, at("2026-03-28T12:00:00"), at("2026-03-31T12:00:00"))
    assert [local(t) for t in ticks] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_dst_fall_back_runs_a_repeated_time_once() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET, so 02:30 happens twice.
    half_past_two = Cron("30 2 * * *", "Europe/Berlin")
    ticks = ticks_between(half_past_two, at("2026-10-24T12:00:00"), at("2026-10-26T12:00:00"))
    assert [local(t) for t in ticks] == ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    hourly = Cron("0 * * * *", "Europe/Berlin")  # every hour: the repeated hour counts twice
    around = ticks_between(hourly, at("2026-10-25T01:30:00"), at("2026-10-25T03:30:00", UTC) + 0)
    assert len(around) == len(set(around))


def test_six_field_cron_has_seconds() -> None:
    every_two = Cron("*/2 * * * * *", "UTC")
    assert every_two.next_after(100.5) == 102


@pytest.mark.parametrize(
    ("interval", "last", "policy", "expected"),
    [
        (1, 997, "latest", [998, 999, 1000]),  # a leader change: every missed tick is sent
        (1, 997, "skip", [998, 999, 1000]),
        (10, 900, "latest", [1000]),  # downtime: only the newest stale tick (none is recent)
        (10, 900, "skip", []),
        (10, 990, "skip", []),  # 1000 is 5 s old: stale for recent=4
    ],
)
def test_which_missed_ticks_fire(
    interval: int, last: int, policy: str, expected: list[int]
) -> None:
    assert (
        to_fire(
            Every(interval), last, 1005.0 if interval == 10 else 1000.5, policy=policy, recent=4
        )
        == expected
    )


def test_never_fired_entry_catches_up_nothing() -> None:
    assert to_fire(Every(1), None, 1000.0, policy="latest", recent=5) == []


def test_add_periodic_validates_its_arguments() -> None:
    app = App("p")

    @app.task
    def job() -> None: ...

    app.add_periodic(job.s(), every=timedelta(seconds=30), name="report")
    with pytest.raises(ConfigError, match="'report' already exists"):
        app.add_periodic(job.s(), every=30, name="report")
    with pytest.raises(ConfigError, match="every= or cron=, exactly one"):
        app.add_periodic(job.s(), name="both", every=1, cron="* * * * *")
    with pytest.raises(ConfigError, match="bad cron expression"):
        app.add_periodic(job.s(), name="bad", cron="61 * * * *")
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        app.add_periodic(job.s(), name="tz", cron="0 3 * * *", tz="Mars/Olympus")
    with pytest.raises(ConfigError, match=r"periodic name 'a\.b'"):
        app.add_periodic(job.s(), name="a.b", every=1)
    with pytest.raises(ConfigError, match="at least 1 second"):
        app.add_periodic(job.s(), name="fast", every=0)

    @app.periodic_task(cron="0 3 * * *", tz="Europe/Berlin")
    def nightly() -> None: ...

    assert app.periodic["nightly"].signature.task == nightly.name
    assert app.periodic["nightly"].schedule.describe() == "cron 0 3 * * * (Europe/Berlin)"


def test_schedule_times_round_up_to_the_millisecond() -> None:
    from jsqueue.services.producer import rfc3339

    assert rfc3339(1_800_000_000.0) == "2027-01-15T08:00:00.000Z"
    assert rfc3339(1_800_000_000.0001) == "2027-01-15T08:00:00.001Z"  # never before the eta
    assert rfc3339(1_800_000_000.9995) == "2027-01-15T08:00:01.000Z"
