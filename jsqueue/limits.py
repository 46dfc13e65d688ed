"""Limits on a task's jobs across the cluster, as plain values: a rate, a cap, a unique key.

The arithmetic is here, without a server: :func:`reserve` is the generic cell rate algorithm
(GCRA) over one stored number, the *theoretical arrival time* of the next job. Every job that
passes reserves its own start time ``1 / rate`` after the one before it, so all workers
together start at most ``rate`` jobs a second, evenly spread (burst: one job). The KV record
and its compare-and-set are :mod:`jsqueue.services.limits`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from jsqueue.config import JOB_ID_RULE, is_job_id, shorten
from jsqueue.errors import ConfigError

#: seconds per unit of a rate string
RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
RATE_RULE = "a rate is '<jobs>/<unit>' with jobs > 0 and unit s, m or h (e.g. '100/s', '10/m')"
_RATE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*")
#: the highest rate one key can hold (one compare-and-set per job; see the README's "Limits")
MAX_RATE_PER_SECOND = 500.0
MAX_CONCURRENCY = 10_000
#: how long a unique key holds when only ``unique_key=`` is given (seconds)
DEFAULT_UNIQUE_FOR = 3600.0


@dataclass(frozen=True)
class Rate:
    """``count`` jobs per ``per`` seconds, cluster-wide."""

    count: float
    per: float
    text: str

    @property
    def interval(self) -> float:
        """Seconds between two jobs' starts."""
        return self.per / self.count

    @property
    def per_second(self) -> float:
        return self.count / self.per


def parse_rate(text: object, where: str = "rate_limit") -> Rate:
    """``'100/s'`` -> :class:`Rate`; a :class:`ConfigError` with the rule otherwise."""
    match = _RATE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{where} {shorten(text)} is not a rate: {RATE_RULE}")
    count, per = float(match.group(1)), RATE_UNITS[match.group(2)]
    if count <= 0 or not math.isfinite(count):
        raise ConfigError(f"{where} {shorten(text)} is not a rate: {RATE_RULE}")
    rate = Rate(count, per, match.group(0).strip())
    if rate.per_second > MAX_RATE_PER_SECOND:
        raise ConfigError(
            f"{where} {shorten(text)} is over the highest rate a cluster-wide limit holds "
            f"({MAX_RATE_PER_SECOND:g}/s): one shared record is updated per job"
        )
    return rate


def check_max_concurrency(value: object, where: str = "max_concurrency") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CONCURRENCY:
        raise ConfigError(
            f"{where} must be a whole number from 1 to {MAX_CONCURRENCY}, not {shorten(value)}"
        )
    return value


def check_unique_for(value: object, where: str = "unique_for") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value < 1e9:
        raise ConfigError(f"{where} must be seconds of at least 1, not {shorten(value)}")
    return float(value)


def check_unique_key(key: object) -> str:
    """A unique key names a KV key: the job id alphabet and length."""
    if not is_job_id(key):
        raise ConfigError(f"unique_key {shorten(key)} is not allowed: {JOB_ID_RULE}")
    assert isinstance(key, str)
    return key


def default_unique_key(task: str, args: Any, kwargs: Any) -> str:
    """The key of a task's job with these arguments (``unique_for`` without a ``unique_key``):
    a digest of the task name and the arguments as JSON, so equal calls share it."""
    try:
        text = json.dumps([task, args, kwargs], sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr((task, args, sorted(kwargs.items())))
    return "t-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def reserve(tat: float | None, now: float, interval: float) -> tuple[float, float]:
    """GCRA with a burst of one: ``(start, new_tat)`` for one job arriving at ``now`` when the
    stored theoretical arrival time is ``tat`` (None: never used). The job starts at ``start``
    (``now`` or later); ``new_tat`` is stored for the next."""
    start = now if tat is None else max(tat, now)
    return start, start + interval


def slots_of(held: Any) -> int:
    """How many slots one holder's entry (``{"n": <slots>, "at": <time>}``) says it holds."""
    n = held.get("n") if isinstance(held, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 0


def live_holders(holders: dict[str, Any], now: float, stale: float) -> dict[str, Any]:
    """The holders of concurrency slots whose entries were renewed within ``stale`` seconds
    (a worker renews its entry while it holds slots; a dead worker's go stale)."""
    live = {}
    for job_id, held in holders.items():
        at = held.get("at") if isinstance(held, dict) else None
        if isinstance(at, int | float) and now - at <= stale:
            live[job_id] = held
    return live
