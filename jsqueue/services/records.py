"""Result records: a job's state and outcome as stored under its id, and how to read one.

A record is a JSON object with a ``state``; SUCCESS carries ``result`` (or a signed pickle, or the
name of the ``object`` holding a large record), failures carry ``error`` as type, message and
traceback text, never a pickle.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from jsqueue.envelope import pickle_value, to_json, unpickle_value
from jsqueue.errors import DecodeError, TaskFailed


class JobState(enum.StrEnum):
    """Where a job stands. PENDING means unknown or queued."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DEAD = "DEAD"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset(
    {JobState.SUCCESS, JobState.FAILURE, JobState.DEAD, JobState.EXPIRED, JobState.REVOKED}
)


@dataclass(frozen=True)
class Outcome:
    """A decoded result record."""

    job_id: str
    state: JobState
    record: dict[str, Any]

    def value(self, secret_key: bytes | None) -> Any:
        """The return value, or raise :class:`TaskFailed` for a failed job."""
        if self.state is JobState.SUCCESS:
            if "pickle" in self.record:
                return unpickle_value(self.record, secret_key, bind=self.job_id, raw=b"")
            return self.record.get("result")
        error = self.record.get("error") or {}
        raise TaskFailed(
            str(self.record.get("failed_job", self.job_id)),
            str(error.get("type", self.state.value.title())),
            str(error.get("message", f"job is {self.state.value}")),
            str(error.get("traceback", "")),
            state=self.state.value,
        )


def parse_record(job_id: str, data: bytes) -> Outcome:
    try:
        record = json.loads(data)
        return Outcome(job_id, JobState(record["state"]), record)
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"result record of {job_id} is unreadable: {exc!r}", raw=data) from None


def success_record(
    job_id: str, value: Any, serializer: str, secret_key: bytes | None, **fields: Any
) -> bytes:
    """Encode a SUCCESS record; :class:`SerializeError` if the value cannot be."""
    record: dict[str, Any] = {"state": JobState.SUCCESS.value, **fields}
    what = f"the return value of {fields.get('task', 'the task')}"
    if serializer == "cloudpickle":
        record.update(pickle_value(value, secret_key, bind=job_id, what=what))
    else:
        record["result"] = value
    return to_json(record, what=what)


def state_record(state: JobState, **fields: Any) -> bytes:
    """Encode a record without a return value (STARTED, RETRY, FAILURE, DEAD, ...)."""
    return json.dumps({"state": state.value, **fields}, default=str).encode()
