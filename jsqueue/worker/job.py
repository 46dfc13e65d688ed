"""What the runner knows of one delivery as it goes (:class:`Job`), and a worker's counters."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jsqueue.outcome import Counter
from jsqueue.wire import Delivery

if TYPE_CHECKING:
    from jsqueue.envelope import Envelope
    from jsqueue.task import Task


@dataclass
class WorkerStats:
    """Counters of one worker's outcomes."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    skipped: int = 0

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed + self.dead_lettered + self.skipped

    def count(self, counter: Counter) -> None:
        name = "succeeded" if counter is Counter.SUCCEEDED else counter.value  # most are
        setattr(self, name, getattr(self, name) + 1)

    def summary(self) -> str:
        return (
            f"{self.succeeded} succeeded, {self.failed} failed, {self.retried} retried, "
            f"{self.dead_lettered} dead-lettered, {self.skipped} skipped"
        )


@dataclass(slots=True)
class Job:
    """One delivery as the runner sees it, filled in as it goes."""

    delivery: Delivery
    started: float = field(default_factory=time.monotonic)
    env: Envelope | None = None
    task: Task[Any, Any] | None = None
    #: a legal id to record the outcome under (None: nothing can be recorded)
    job_id: str | None = None
    task_name: str | None = None
    #: the job's id as sent when it is not a legal id (kept, shortened, in its dead letter)
    given_id: str = ""
    value: Any = None
    error: BaseException | None = None
    #: the traceback text of an error raised in a pool child (its own traceback stayed there)
    remote_traceback: str = ""
    #: the encoded SUCCESS record
    result: bytes | None = None
    #: the object holding the whole SUCCESS record when it is too large for the bucket
    result_object: str | None = None
    result_full: bytes = b""
    #: why a job is skipped (expired, revoked, already recorded)
    why: str = ""
    #: what the log line adds after the outcome
    note: str = ""
    #: this delivery runs the job here (another delivery of it waits for its settlement)
    owns_run: bool = False
    #: a suspect: delivered again after its worker died, so it runs alone
    alone: bool = False
    #: how many times in a row its worker died while it ran alone
    crashes_alone: int = 0
    #: the task whose cluster-wide concurrency slot this job holds (given back when settled)
    slot: str | None = None
    #: how it holds the executor's gate until settled: True alone, False together, None not
    gate: bool | None = None
    #: it killed its worker (a RETRY record says so, so the next delivery runs alone too)
    crashed: bool = False

    @property
    def label(self) -> str:
        seq = self.delivery.stream_seq
        return f"{self.task_name or '?'}[{self.job_id or f'seq-{seq}'}]"


def times(started: float) -> dict[str, float]:
    """Wall-clock start and finish of a job that started at monotonic time ``started``."""
    now = time.time()
    return {"started": now - (time.monotonic() - started), "finished": now}
