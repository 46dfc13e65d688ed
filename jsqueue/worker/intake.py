"""What arrives: a delivery turned into a job, or the reason it cannot be one.

Undecodable and malformed messages get the best id they have for their dead letter; a job whose
arguments wait in the object store gets them back; a job delivered again after its worker died is
a suspect, run alone until its worker has died ``CRASHES_ALONE`` times while it ran alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from jsqueue import outcome
from jsqueue.config import Settings, is_job_id, shorten
from jsqueue.envelope import Envelope, decode, peek, sent_id
from jsqueue.errors import DecodeError, MalformedError, SignatureError
from jsqueue.outcome import Plan, Reason
from jsqueue.services.producer import MSG_ID
from jsqueue.services.records import JobState, Outcome
from jsqueue.wire import Broker
from jsqueue.worker.job import Job

#: Times a job's worker must die while the job runs alone before the job is blamed: a worker
#: SIGKILLed from outside (a deploy, the OOM killer) once while a suspect ran alone must not be
#: taken for the suspect's doing.
CRASHES_ALONE = 3


async def arguments(broker: Broker, settings: Settings, job: Job, env: Envelope) -> Envelope | None:
    """``env`` with the arguments it keeps in the object store; None (``job.error`` says
    why) if they are gone or unreadable."""
    assert env.args_object is not None
    data = await (await broker.objects()).get(env.args_object)
    if data is None:
        job.error = LookupError(
            f"the arguments of job {env.id} were stored as object {env.args_object}, which "
            f"is gone (objects are kept for result_ttl, {settings.result_ttl:g}s)"
        )
        return None
    try:
        whole = decode(data, settings.secret_key)
    except DecodeError as exc:
        job.error = exc
        return None
    if whole.id != env.id:
        job.error = LookupError(f"object {env.args_object} holds job {whole.id}, not {env.id}")
        return None
    return replace(env, args=whole.args, kwargs=whole.kwargs, serializer=whole.serializer)


def undecodable(job: Job, exc: DecodeError) -> Plan:
    """A message that is no job: dead-letter it under the best id it has."""
    job.error = exc
    job.job_id, job.task_name = peek(job.delivery.data)
    if job.job_id is None:
        sent = job.delivery.headers.get(MSG_ID)
        if is_job_id(sent):
            job.job_id = sent
    if isinstance(exc, SignatureError):
        return outcome.dead(Reason.BAD_SIGNATURE, followers=False)
    if isinstance(exc, MalformedError):
        given = sent_id(job.delivery.data)
        if given is not None and not is_job_id(given):
            # as sent (cut short), so that `dlq show order:1` finds what a producer sent as
            # order:1; a non-string id is kept as its repr
            job.given_id = given[:200] if isinstance(given, str) else shorten(given, 200)
        return outcome.dead(Reason.MALFORMED, followers=False)
    return outcome.dead(Reason.UNDECODABLE, followers=False)


def suspect(recorded: Outcome | None, attempt: int) -> bool:
    """Whether attempt ``attempt`` of a job may follow one that killed its worker: not if the
    attempt just before it was given back to wait out a retry its task asked for (a RETRY
    record of that attempt, from an exception it raised)."""
    if recorded is None or recorded.state is not JobState.RETRY:
        return True
    if recorded.record.get("attempts") != attempt - 1:
        return True  # a later attempt ran after that retry, and left no record: it died
    return bool(recorded.record.get("crashed"))


def crashes_alone(recorded: Outcome | None, delivery: int) -> int:
    """How many times in a row the job's worker died while it ran alone: one more than its
    record says if delivery ``delivery`` started alone and never settled, else 0."""
    if recorded is None or recorded.state is not JobState.STARTED:
        return 0
    if recorded.record.get("alone") != delivery:
        return 0
    before = recorded.record.get("crashes_alone", 0)
    return (before if isinstance(before, int) else 0) + 1


class Settlements(dict[str, asyncio.Event | None]):
    """The ids of the jobs running here; a redelivery of one waits until it is settled. The
    event to wait on is made only when one waits (most jobs are never delivered twice). A
    dict of them, so that ``job_id in settlements`` (asked for every job) is no Python call."""

    def begin(self, job_id: str) -> None:
        self[job_id] = None

    async def wait(self, job_id: str) -> None:
        if job_id not in self:
            return
        event = self[job_id]
        if event is None:
            event = self[job_id] = asyncio.Event()
        await event.wait()

    def end(self, job_id: str) -> None:
        event = self.pop(job_id, None)
        if event is not None:
            event.set()
