"""When periodic jobs fire: fixed intervals anchored to the Unix epoch, and cron expressions.

Both are pure: given a moment, they say the next fire time after it. Fire times come from the
schedule, never from "now + interval", so nothing drifts, and every beat process computes the
same ticks (which is what lets two beats agree on what "this tick" is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from jsqueue.errors import ConfigError


@dataclass(frozen=True)
class Every:
    """Every ``seconds`` (at least 1), at multiples of it since the Unix epoch."""

    seconds: int

    def __post_init__(self) -> None:
        if self.seconds < 1:
            raise ConfigError("a periodic interval must be at least 1 second")

    def next_after(self, moment: float) -> int:
        return (math.floor(moment / self.seconds) + 1) * self.seconds

    def describe(self) -> str:
        return f"every {timedelta(seconds=self.seconds)}"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo("UTC")


@dataclass(frozen=True)
class Cron:
    """A cron expression (5 fields, or 6 with seconds first) in a time zone.

    Daylight saving follows cronsim, which mimics Debian cron for 5-field expressions at fixed
    times: a time skipped by the spring change runs at the first moment after the gap, and a
    time repeated by the autumn change runs once (the first occurrence).
    """

    expression: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"unknown time zone {self.tz!r} (use an IANA name such as 'Europe/Berlin')"
            ) from None
        try:
            CronSim(self.expression, datetime.now(self.zone))
        except CronSimError as exc:
            raise ConfigError(f"bad cron expression {self.expression!r}: {exc}") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def next_after(self, moment: float) -> int:
        start = datetime.fromtimestamp(math.floor(moment), self.zone)
        return int(next(CronSim(self.expression, start)).timestamp())

    def describe(self) -> str:
        return f"cron {self.expression} ({self.tz})"


Schedule = Every | Cron


def ticks_between(schedule: Schedule, after: float, until: float, limit: int = 10_000) -> list[int]:
    """The fire times in ``(after, until]``, oldest first, at most ``limit`` (the newest)."""
    ticks: list[int] = []
    tick = schedule.next_after(after)
    while tick <= until:
        ticks.append(tick)
        if len(ticks) > limit:
            ticks.pop(0)
        tick = schedule.next_after(tick)
    return ticks


def to_fire(
    schedule: Schedule,
    last: int | None,
    now: float,
    *,
    policy: str,
    recent: float,
) -> list[int]:
    """Which due ticks to fire now, given the last tick fired (None: never fired).

    Ticks due within ``recent`` seconds were missed by a leader change or a short outage and are
    all fired. Older ones were missed by downtime: ``"latest"`` fires only the newest of them
    (and none if a recent tick is fired anyway); ``"skip"`` fires none.
    """
    if last is None:
        return []
    due = ticks_between(schedule, last, now, limit=1000)
    fresh = [t for t in due if t >= now - recent]
    stale = [t for t in due if t < now - recent]
    if fresh or policy == "skip" or not stale:
        return fresh
    return [stale[-1]]
