"""Sending a delivered job again as a new message, its attempts carried in a header.

Two waits must not hold a queue's ack-pending slots, and must not count as attempts (see
DESIGN "Attempts, waits and crashes"): a long retry delay, and a paused queue. For both the job
is published again (the same bytes, a fresh ``Nats-Msg-Id``: the duplicate window would drop the
old one) with ``Jsq-Attempt`` saying how many times it already ran, and only then is the
delivery acked. A crash in between leaves two copies, never none; a worker that meets the
old one again finds the RETRY record saying the job moved, sends the copy again (the same
``Nats-Msg-Id``: dropped as a duplicate if the first one made it) and acks the old one.
"""

from __future__ import annotations

import time

from jsqueue.config import LEVEL_DUE
from jsqueue.services.producer import MSG_ID, SCHEDULE, SCHEDULE_TARGET, rfc3339
from jsqueue.wire import ATTEMPT_HEADER, Broker, Delivery

#: asks the server to keep only the newest message on the subject (a retry schedule sent twice
#: replaces itself)
ROLLUP = "Nats-Rollup"


def _carried_headers(delivery: Delivery, attempts: int, msg_id: str) -> dict[str, str]:
    """The delivery's own headers (trace context, say) without the server's, plus ours."""
    headers = {
        k: v
        for k, v in delivery.headers.items()
        if not k.startswith("Nats-") and k != ATTEMPT_HEADER
    }
    headers[ATTEMPT_HEADER] = str(attempts)
    headers[MSG_ID] = msg_id
    return headers


async def hand_back(broker: Broker, delivery: Delivery) -> None:
    """Put a delivery that never started back at the end of its queue, then ack it: it waited
    on a paused queue, which is no attempt of the job."""
    original = delivery.headers.get(MSG_ID) or "job"
    headers = _carried_headers(delivery, delivery.attempt - 1, f"{original}.h{delivery.stream_seq}")
    await broker.publish(delivery.subject, delivery.data, headers)
    await delivery.ack()


async def schedule_retry(
    broker: Broker,
    delivery: Delivery,
    *,
    job_id: str,
    attempts: int,
    at: float,
    priority: int | None = None,
) -> None:
    """Send the job again after ``attempts`` runs, due at ``at`` (at once if that passed) on
    a server schedule under ``retry.<queue>.<job id>``, into the queue and priority level it
    came from; the caller acks the delivery once this returned. The copy's ``Nats-Msg-Id`` is
    ``<job id>.a<attempts>``: sent again within the duplicate window it is dropped, and a
    rollup on its subject replaces an older one, so a job has one retry schedule."""
    subject = broker.settings.retry_subject(delivery.queue, job_id)
    headers = _carried_headers(delivery, attempts, f"{job_id}.a{attempts}")
    headers[SCHEDULE] = f"@at {rfc3339(max(at, time.time() + 1))}"
    level = delivery.priority if priority is None else priority
    headers[SCHEDULE_TARGET] = broker.settings.queue_subject(delivery.queue, level)
    headers[ROLLUP] = "sub"
    await broker.publish(subject, delivery.data, headers)


async def defer(
    broker: Broker, delivery: Delivery, *, job_id: str, at: float, headers: dict[str, str]
) -> None:
    """Send a job that has not run in this delivery again, due at ``at`` on a server schedule
    under ``sched.<queue>.<job id>`` (so status counts it as scheduled and revoke purges it)
    into its queue's due level (:data:`~jsqueue.config.LEVEL_DUE`, where no backlog waits),
    with its attempts carried and ``headers`` added; the caller acks the delivery once this
    returned. Its ``Nats-Msg-Id`` names this delivery's message: if the ack is lost and the
    message comes back, the second copy is dropped as a duplicate."""
    original = delivery.headers.get(MSG_ID) or job_id
    msg_id = f"{original}.w{delivery.stream_seq}"
    carried = _carried_headers(delivery, delivery.attempt - 1, msg_id)
    carried.update(headers)
    carried[SCHEDULE] = f"@at {rfc3339(max(at, time.time() + 1))}"
    carried[SCHEDULE_TARGET] = broker.settings.queue_subject(delivery.queue, LEVEL_DUE)
    carried[ROLLUP] = "sub"
    subject = broker.settings.schedule_subject(delivery.queue, job_id)
    await broker.publish(subject, delivery.data, carried)
