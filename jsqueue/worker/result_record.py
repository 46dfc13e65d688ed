"""A success's record: in the results bucket, or in the object store when too large for it."""

from __future__ import annotations

from jsqueue.config import Settings
from jsqueue.errors import ResultTooLarge, SerializeError
from jsqueue.outcome import Reason
from jsqueue.services.results import JobState, state_record, success_record
from jsqueue.worker.job import Job, times

#: Bytes a result record may take below the server's max_payload (subject, headers, framing).
_RECORD_SLACK = 1024


def encode_result(job: Job, settings: Settings, worker_id: str, max_payload: int) -> Reason | None:
    """Encode the SUCCESS record of ``job`` into it; the reason to dead-letter it if that
    record cannot be stored."""
    env, task = job.env, job.task
    assert env is not None
    assert task is not None
    try:
        job.result = success_record(
            env.id,
            job.value,
            task.serializer,
            settings.secret_key,
            task=env.task,
            attempts=job.delivery.attempt,
            worker=worker_id,
            **times(job.started),
        )
    except SerializeError as exc:
        job.error = exc
        return Reason.UNSERIALIZABLE_RESULT
    if len(job.result) <= max_payload - _RECORD_SLACK:
        return None
    cap = settings.max_object_size
    if len(job.result) > cap:
        job.error = ResultTooLarge(
            f"the return value of {env.task} encodes to {len(job.result)} bytes, over "
            f"max_object_size ({cap}); return a reference (a URL, a key) instead, raise "
            "max_object_size, or set ignore_result=True"
        )
        return Reason.RESULT_TOO_LARGE
    # too large for the bucket: the record goes to the object store, named per attempt
    # (a second put under one name would replace the first), and a small record names it
    name = f"results.{env.id}.{job.delivery.attempt}"
    job.result_object, job.result_full = name, job.result
    job.result = state_record(
        JobState.SUCCESS,
        object=name,
        size=len(job.result_full),
        task=env.task,
        attempts=job.delivery.attempt,
        worker=worker_id,
        **times(job.started),
    )
    return None
