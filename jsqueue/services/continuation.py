"""What a worker does after a job of a chain or chord settled: the next step, or the failure."""

from __future__ import annotations

import time
from typing import Any

from jsqueue.envelope import Envelope
from jsqueue.services import chords
from jsqueue.services.deps import Deps
from jsqueue.services.producer import send, signature_envelope
from jsqueue.services.results import JobState, state_record


def has_followers(env: Envelope) -> bool:
    return bool(env.link) or env.chord is not None


async def after_success(app: Deps, env: Envelope, value: Any) -> None:
    """Send the chain's next step with ``value`` in front; record a chord member."""
    if env.link:
        step = env.link[0]
        nxt = signature_envelope(
            app.settings,
            app.route(str(step["task"])),
            step,
            (value,),
            link=tuple(env.link[1:]),
            parent_id=env.id,
            root_id=env.root_id or env.id,
            notify=env.notify,
        )
        await send(await app.broker(), nxt)
    if env.chord is not None:
        await chords.member_succeeded(app, env, value)


async def after_failure(app: Deps, env: Envelope, error: dict[str, str]) -> None:
    """Stop the chain (its remaining steps fail with this error); fail the chord."""
    if env.link:
        await _fail_steps(app, env, error)
    if env.chord is not None:
        await chords.member_failed(app, env, error)


async def abandon(app: Deps, env: Envelope, error: dict[str, str]) -> None:
    """What follows ``env`` can never go on (a follow-up failed for good): record FAILURE for
    the chain's later steps and for the chord, so that nobody waits for them in vain."""
    await _fail_steps(app, env, error)
    if env.chord is not None:
        record = state_record(
            JobState.FAILURE, error=error, failed_job=env.id, finished=time.time()
        )
        backend = await app.result_backend()
        await backend.write_final(str(env.chord["id"]), record, notify=env.notify)


async def _fail_steps(app: Deps, env: Envelope, error: dict[str, str]) -> None:
    backend = await app.result_backend()
    record = state_record(JobState.FAILURE, error=error, failed_job=env.id, finished=time.time())
    for step in env.link:
        step_id = step.get("options", {}).get("job_id")
        if step_id:
            await backend.write_final(str(step_id), record, notify=env.notify)
