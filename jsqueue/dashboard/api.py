"""The JSON API under ``/api/...``: what the pages fetch and post, and what scripts may use.

Every handler calls the service function the CLI calls; :data:`ROUTES` lists them (the README's
table is this list). Errors are ``{"error": "..."}`` with 400 (bad input), 404 (no such thing) or
409 (the thing cannot do that now).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jsqueue.config import check_queue
from jsqueue.dashboard.jobs import job_view
from jsqueue.dashboard.monitor import Monitor
from jsqueue.errors import JsqueueError
from jsqueue.services import dlq
from jsqueue.services.queues import pause_queue, resume_queue
from jsqueue.services.status import purge_queue, revoke_job

log = logging.getLogger("jsqueue.dashboard")
Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def monitor(request: Request) -> Monitor:
    found: Monitor = request.app.state.monitor
    return found


def api(handler: Callable[[Request], Awaitable[Any]]) -> Handler:
    """A handler returning JSON-able data; jsqueue's errors become a 4xx with the message."""

    async def wrapped(request: Request) -> Response:
        try:
            return JSONResponse(json.loads(json.dumps(await handler(request), default=str)))
        except ApiError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except JsqueueError as exc:
            text = str(exc)
            status = 404 if "not found" in text or text.startswith("no ") else 409
            return JSONResponse({"error": text}, status_code=status)
        except Exception as exc:  # a bug, or the server gone: say so, keep serving
            log.exception("%s %s failed", request.method, request.url.path)
            return JSONResponse({"error": f"internal error: {exc!r}"}, status_code=500)

    return wrapped


async def body(request: Request) -> dict[str, Any]:
    """The request's JSON object (empty for an empty body); 400 for anything else."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the request body is not JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return doc


def queue_name(request: Request) -> str:
    name: str = request.path_params["name"]
    try:
        check_queue(name)
    except JsqueueError as exc:
        raise ApiError(400, str(exc)) from None
    return name


async def overview(request: Request) -> Any:
    return monitor(request).snapshot


async def queues(request: Request) -> Any:
    return monitor(request).snapshot["queues"]


async def workers(request: Request) -> Any:
    return monitor(request).snapshot["workers"]


async def pause(request: Request) -> Any:
    name = queue_name(request)
    note = await pause_queue(monitor(request).app, name, by="dashboard")
    await monitor(request).refresh()
    return {"queue": name, "paused": True, "since": note.get("at")}


async def resume(request: Request) -> Any:
    name = queue_name(request)
    was = await resume_queue(monitor(request).app, name)
    await monitor(request).refresh()
    return {"queue": name, "paused": False, "was_paused": was}


async def purge(request: Request) -> Any:
    name = queue_name(request)
    doc = await body(request)
    if doc.get("confirm") != name:
        raise ApiError(400, f'confirm by sending {{"confirm": "{name}"}}: nothing removed')
    removed = await purge_queue(monitor(request).app, name, bool(doc.get("scheduled")))
    await monitor(request).refresh()
    return {"queue": name, "removed": removed}


async def job(request: Request) -> Any:
    try:
        return await job_view(monitor(request), request.path_params["job_id"])
    except JsqueueError as exc:  # an unknown or illegal id
        raise ApiError(404, str(exc)) from None


async def revoke(request: Request) -> Any:
    doc = await body(request)
    job_id = request.path_params["job_id"]
    message = await revoke_job(monitor(request).app, job_id, terminate=bool(doc.get("terminate")))
    return {"job_id": job_id, "message": message}


async def letters(request: Request) -> Any:
    queue = request.query_params.get("queue") or None
    task = request.query_params.get("task") or None
    broker = await monitor(request).app.broker()
    found = await dlq.list_letters(broker, queue=queue, task=task)
    return [letter.to_dict(with_payload=False) for letter in found]


async def letter(request: Request) -> Any:
    return (await _letter(request)).to_dict(with_payload=True)


async def _letter(request: Request) -> dlq.DeadLetter:
    job_id = request.path_params["job_id"]
    found = await dlq.find(await monitor(request).app.broker(), job_id)
    if found is None:
        raise ApiError(404, f"no dead letter for job {job_id}")
    return found


async def replay_one(request: Request) -> Any:
    found = await _letter(request)
    new_id = await dlq.replay(await monitor(request).app.broker(), found)
    await monitor(request).refresh()
    return {"job_id": found.job_id, "new_id": new_id}


async def replay_many(request: Request) -> Any:
    doc = await body(request)
    queue = doc.get("queue") or None
    if queue is not None and not isinstance(queue, str):
        raise ApiError(400, '"queue" must be a queue name')
    found = await dlq.list_letters(await monitor(request).app.broker(), queue=queue)
    return monitor(request).replay_all(found).to_dict()


async def replay_progress(request: Request) -> Any:
    found = monitor(request).replays.get(request.path_params["replay_id"])
    if found is None:
        raise ApiError(404, f"no replay {request.path_params['replay_id']}")
    return found.to_dict()


async def purge_letters(request: Request) -> Any:
    doc = await body(request)
    queue = doc.get("queue") or None
    expected = queue or "all"
    if doc.get("confirm") != expected:
        raise ApiError(400, f'confirm by sending {{"confirm": "{expected}"}}: nothing removed')
    removed = await dlq.purge(await monitor(request).app.broker(), queue)
    await monitor(request).refresh()
    return {"queue": queue, "removed": removed}


async def stream(request: Request) -> Response:
    """Server-sent events: an ``overview`` event with each snapshot (about one a second)."""
    watcher = monitor(request)

    async def events() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        async for snapshot in watcher.updates():
            if await request.is_disconnected():
                return
            yield f"event: overview\ndata: {json.dumps(snapshot, default=str)}\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


#: (method, path, handler, what it does): the API, as the README documents it
ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "/api/overview", api(overview), "queues, workers, rates, server: one snapshot"),
    ("GET", "/api/stream", stream, "server-sent events: an `overview` snapshot each second"),
    ("GET", "/api/queues", api(queues), "per queue: ready, running, retrying, scheduled, ..."),
    ("POST", "/api/queues/{name}/pause", api(pause), "pause a queue"),
    ("POST", "/api/queues/{name}/resume", api(resume), "resume a queue"),
    (
        "POST",
        "/api/queues/{name}/purge",
        api(purge),
        'remove its ready jobs; body `{"confirm": name}`',
    ),
    ("GET", "/api/workers", api(workers), "live workers' registry records"),
    ("GET", "/api/jobs/{job_id}", api(job), "a job: state, where, arguments, outcome, timeline"),
    (
        "POST",
        "/api/jobs/{job_id}/revoke",
        api(revoke),
        'revoke; body `{"terminate": true}` stops it',
    ),
    ("GET", "/api/dlq", api(letters), "dead letters (`?queue=`, `?task=`)"),
    ("GET", "/api/dlq/{job_id}", api(letter), "one dead letter with traceback and payload"),
    ("POST", "/api/dlq/{job_id}/replay", api(replay_one), "replay one dead letter"),
    ("POST", "/api/dlq-replay", api(replay_many), 'replay all (body `{"queue": q}`: one queue\'s)'),
    ("GET", "/api/dlq-replay/{replay_id}", api(replay_progress), "a replay's progress"),
    ("POST", "/api/dlq-purge", api(purge_letters), 'remove dead letters; `{"confirm": "all"}`'),
]


def routes() -> list[Route]:
    return [Route(path, handler, methods=[method]) for method, path, handler, _ in ROUTES]
