"""The HTML pages: server-rendered with Jinja2 (autoescaped: nothing from a job is markup), a
little JavaScript (``static/dashboard.js``) for live updates and the action buttons."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from jsqueue.dashboard.api import monitor
from jsqueue.dashboard.jobs import job_view
from jsqueue.dashboard.security import COOKIE, Policy, dumps
from jsqueue.errors import JsqueueError
from jsqueue.services import dlq

HERE = Path(__file__).parent
#: dead letters listed on the page (the newest; the API lists all)
LETTERS_SHOWN = 500
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["when"] = lambda t: (
    datetime.fromtimestamp(float(t)).astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "-"
)
templates.env.filters["ago"] = lambda t: f"{max(0.0, time.time() - float(t)):.0f}s" if t else "-"
templates.env.filters["tojs"] = lambda value: Markup(dumps(value))  # <, >, & escaped


def policy(request: Request) -> Policy:
    found: Policy = request.app.state.policy
    return found


def page(request: Request, name: str, **context: Any) -> Response:
    rules = policy(request)
    context.update(
        csrf=rules.csrf,
        read_only=rules.read_only,
        can_logout=rules.token is not None,
        nav=name.split(".")[0],
    )
    return templates.TemplateResponse(request, name, context)


async def overview(request: Request) -> Response:
    return page(request, "overview.html", snapshot=monitor(request).snapshot)


async def workers(request: Request) -> Response:
    return page(request, "workers.html", snapshot=monitor(request).snapshot)


async def jobs(request: Request) -> Response:
    job_id = (request.query_params.get("id") or "").strip()
    if job_id:
        return RedirectResponse(request.url_for("job", job_id=job_id), status_code=303)
    return page(request, "jobs.html", snapshot=monitor(request).snapshot)


async def job(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    try:
        view = await job_view(monitor(request), job_id)
    except JsqueueError as exc:
        return page(request, "jobs.html", snapshot=monitor(request).snapshot, missing=str(exc))
    return page(request, "job.html", job=view)


async def letters(request: Request) -> Response:
    queue = request.query_params.get("queue") or None
    broker = await monitor(request).app.broker()
    found = await dlq.list_letters(broker, queue=queue)
    counts = await dlq.count(broker)
    shown = found[-LETTERS_SHOWN:][::-1]  # the newest first
    return page(request, "dlq.html", letters=shown, total=len(found), counts=counts, queue=queue)


async def letter(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    found = await dlq.find(await monitor(request).app.broker(), job_id)
    return page(request, "letter.html", letter=found, job_id=job_id)


async def login(request: Request) -> Response:
    rules = policy(request)
    if rules.token is None:
        return RedirectResponse("/", status_code=303)
    if request.method == "GET":
        return page(request, "login.html", wrong=False)
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    given = (form.get("token") or [""])[0]
    if not rules.token_matches(given):
        response = page(request, "login.html", wrong=True)
        response.status_code = 401
        return response
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE, rules.session(), httponly=True, samesite="strict", secure=request.url.is_secure
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


def routes() -> list[Route | Mount]:
    return [
        Route("/", overview, name="overview"),
        Route("/workers", workers, name="workers"),
        Route("/jobs", jobs, name="jobs"),
        Route("/jobs/{job_id:path}", job, name="job"),
        Route("/dlq", letters, name="dlq"),
        Route("/dlq/{job_id:path}", letter, name="letter"),
        Route("/login", login, methods=["GET", "POST"], name="login"),
        Route("/logout", logout, methods=["POST"], name="logout"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
