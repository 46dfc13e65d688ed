"""One job as its page shows it: ``locate_job``'s answer, the job as sent, and a timeline."""

from __future__ import annotations

import json
from typing import Any

from jsqueue.dashboard.monitor import Monitor
from jsqueue.services import dlq
from jsqueue.services.status import job_envelope, locate_job

#: arguments longer than this (as JSON) are cut on the page
ARGS_SHOWN = 2_000


def cut(value: Any, length: int = ARGS_SHOWN) -> str:
    """``value`` as JSON text, cut to ``length`` characters (with a note of how long it was)."""
    text = json.dumps(value, default=repr, ensure_ascii=False)
    if len(text) <= length:
        return text
    return f"{text[:length]}... ({len(text):,} characters in all)"


async def job_view(monitor: Monitor, job_id: str) -> dict[str, Any]:
    """What the dashboard knows of ``job_id``; :class:`JsqueueError` if it is nowhere."""
    found = await locate_job(monitor.app, job_id)
    label = job_id if len(job_id) <= 40 else f"{job_id[:40]}..."
    view: dict[str, Any] = {"id": job_id, "label": label, "located": found}
    view["state"] = found.get("state", "PENDING")
    view["where"] = found.get("where", "?")
    view["task"] = found.get("task")
    letter = found.get("dead_letter") or {}
    env = await job_envelope(monitor.app, job_id)
    if env is not None:
        view["task"] = view["task"] or env.task
        view["queue"] = env.queue
        view["args"] = cut(list(env.args))
        view["kwargs"] = cut(env.kwargs)
        view["created"] = env.created or None
        view["eta"] = env.eta
        view["priority"] = env.priority
    view["task"] = view["task"] or letter.get("task")
    view["queue"] = view.get("queue") or letter.get("queue")
    error = found.get("error")
    if isinstance(error, dict) and error.get("type"):
        view["error"] = {k: str(error.get(k, "")) for k in ("type", "message", "traceback")}
    elif letter:
        broker = await monitor.app.broker()
        full = await dlq.find(broker, job_id)  # the traceback, which locate_job leaves out
        view["error"] = {
            "type": str(letter.get("error_type", "")),
            "message": str(letter.get("error_message", "")),
            "traceback": full.traceback if full is not None else "",
            "reason": str(letter.get("reason", "")),
        }
    if found.get("state") == "SUCCESS":
        view["result"] = cut(found.get("result"))
    view["attempts"] = found.get("attempts") or letter.get("attempts")
    view["worker"] = found.get("running_on") or found.get("worker") or letter.get("worker")
    view["running_in"] = found.get("running_in")
    view["timeline"] = timeline(monitor, job_id, found, view)
    return view


def timeline(
    monitor: Monitor, job_id: str, found: dict[str, Any], view: dict[str, Any]
) -> list[dict[str, Any]]:
    """The job's events, oldest first: from the events workers publish when they are on,
    otherwise from the timestamps its record and dead letter hold."""
    events = monitor.events.get(job_id)
    if events:
        return sorted(
            (
                {
                    "time": float(e.get("time") or 0),
                    "kind": str(e.get("kind", "?")),
                    "detail": _detail(e),
                }
                for e in events
            ),
            key=lambda e: e["time"],
        )
    marks: list[tuple[Any, str, str]] = [
        (view.get("created"), "sent", str(view.get("queue") or "")),
        (view.get("eta"), "due", "delayed until then"),
        (found.get("started") or found.get("running_since"), "started", str(view["worker"] or "")),
        (found.get("at") if found.get("state") == "RETRY" else None, "failed, will retry", ""),
        (found.get("retry_at"), "retry due", ""),
        (found.get("finished"), str(found.get("state", "")).lower(), ""),
        ((found.get("dead_letter") or {}).get("time"), "dead-lettered", ""),
        (found.get("revoked_at"), "revoked", ""),
    ]
    return sorted(
        ({"time": float(t), "kind": kind, "detail": detail} for t, kind, detail in marks if t),
        key=lambda e: e["time"],
    )


def _detail(event: dict[str, Any]) -> str:
    parts = []
    for key in ("worker", "attempt", "error"):
        if event.get(key):
            parts.append(f"{key} {event[key]}")
    if event.get("duration") is not None:
        parts.append(f"took {float(event['duration']) * 1000:.1f} ms")
    return ", ".join(parts)
