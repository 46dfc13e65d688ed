"""Sending canvas nodes, and what a worker does after a job of a canvas settled.

:func:`send_node` turns a node (see :mod:`jsqueue.nodes`) into jobs: a task node is one job, a
group node each member's jobs, a chord node its record and then its members. A canvas sends its
first jobs this way, and a worker sends what follows a job that succeeded the same way, with the
job's result in front, before it acks: a crash in between sends the same jobs again under the
same ids (deduplicated), never loses them. A job that failed for good ends what follows it and
sends its error callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from jsqueue import nodes
from jsqueue.envelope import Envelope
from jsqueue.nodes import Node
from jsqueue.services import chords
from jsqueue.services.deps import Deps
from jsqueue.services.producer import send_many, signature_envelope
from jsqueue.services.results import JobState, state_record


def has_followers(env: Envelope) -> bool:
    return bool(env.link) or env.chord is not None or bool(env.on_error)


async def send_node(
    app: Deps,
    node: Node,
    extra_args: Sequence[Any] = (),
    *,
    parent_id: str | None = None,
    root_id: str | None = None,
    notify: str | None = None,
) -> list[Envelope]:
    """Send the jobs that start ``node``, with ``extra_args`` in front of each; return them."""
    envelopes: list[Envelope] = []
    await _collect(app, node, tuple(extra_args), parent_id, root_id, notify, envelopes)
    await send_many(await app.broker(), envelopes)
    return envelopes


async def _collect(
    app: Deps,
    node: Node,
    extra: tuple[Any, ...],
    parent_id: str | None,
    root_id: str | None,
    notify: str | None,
    out: list[Envelope],
) -> None:
    shape = nodes.kind(node)
    if shape == "group":
        for part in node["group"]:
            await _collect(app, part, extra, parent_id, root_id, notify, out)
        return
    if shape == "chord":
        header = node["header"]
        if not header:  # Celery: a chord of nothing calls back at once, with []
            await _collect(app, node["body"], ([],), parent_id, root_id, notify, out)
            return
        await chords.start_chord(app, node["id"], len(header), node["body"], notify=notify)
        for index, part in enumerate(header):
            membership = {"id": node["id"], "index": index, "size": len(header)}
            joined = nodes.member(part, membership)
            await _collect(app, joined, extra, parent_id, root_id, notify, out)
        return
    fields: dict[str, Any] = {"notify": notify, "parent_id": parent_id, "root_id": root_id}
    if node.get("link"):
        fields["link"] = tuple(node["link"])
    if node.get("chord"):
        fields["chord"] = node["chord"]
    route = app.route(str(node["task"]))
    present = {k: v for k, v in fields.items() if v is not None}
    out.append(signature_envelope(app.settings, route, node, extra, **present))


async def after_success(app: Deps, env: Envelope, value: Any) -> None:
    """Send what follows the job with ``value`` in front; record a chord member."""
    following = nodes.fold(env.link)
    if following is not None:
        root = env.root_id or env.id
        await send_node(app, following, (value,), parent_id=env.id, root_id=root, notify=env.notify)
    if env.chord is not None:
        await chords.member_succeeded(app, env, value, send_node)


async def after_failure(
    app: Deps, env: Envelope, error: dict[str, str], *, errbacks: bool = True
) -> None:
    """The job failed for good: send its error callbacks (unless ``errbacks`` is false: it
    never ran), end what follows it (its later steps fail with this error), fail its chord."""
    if errbacks:
        await send_errbacks(app, env, error)
    await abandon(app, env, error, count_member=False)
    if env.chord is not None:
        await chords.member_failed(app, env, error, send_node)


async def send_errbacks(app: Deps, env: Envelope, error: dict[str, str]) -> None:
    """Each error callback of ``env``: called with the job's id and its error after its own
    arguments. One that belongs to a whole canvas (``once``: it has its job id from when the
    canvas was built) is sent by the first job of it to fail only."""
    errbacks: list[Node] = []
    for index, handler in enumerate(env.on_error):
        options = dict(handler.get("options") or {})
        if handler.get("once"):
            if not await chords.claim_errback(app, str(options["job_id"]), env.id):
                continue
        else:
            options["job_id"] = f"{env.id}.e{index}"
        args = [*handler.get("args", []), env.id, error]
        plain = {k: v for k, v in handler.items() if k != "once"}
        errbacks.append({**plain, "args": args, "immutable": True, "options": options})
    for errback in errbacks:
        await send_node(app, errback, notify=None)


async def abandon(
    app: Deps, env: Envelope, error: dict[str, str], *, count_member: bool = True
) -> None:
    """What follows ``env`` can never go on: record FAILURE for every job after it (and for
    the chords they were to complete), so that nobody waits for them in vain."""
    record = state_record(JobState.FAILURE, error=error, failed_job=env.id, finished=time.time())
    following = nodes.fold(env.link)
    if following is not None:
        await chords.abort(app, following, record, error, env.id, env.notify, send_node)
    if count_member and env.chord is not None:
        backend = await app.result_backend()
        await backend.write_final(str(env.chord["id"]), record, notify=env.notify)
