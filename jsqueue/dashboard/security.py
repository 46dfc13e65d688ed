"""Who may look and who may act: basic auth or a token, read-only mode, CSRF and Host checks.

Every request passes :class:`Guard`, an ASGI middleware. Without auth the dashboard must be bound
to a loopback address (:meth:`Policy.check_bind`), and then only answers requests whose ``Host``
is a loopback name (a DNS-rebinding page cannot reach it). Actions are POSTs; each must carry the
page's CSRF token in ``X-Jsq-Csrf`` (basic auth and the login cookie are sent by the browser on
its own, so neither proves the page asked), except a request with a bearer token, which no other
site can make a browser send. A POST whose ``Origin`` is another site is refused either way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from jsqueue.errors import ConfigError

COOKIE = "jsq_dashboard"
CSRF_HEADER = "x-jsq-csrf"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: what anyone may fetch: the login form and the static files
OPEN_PATHS = ("/login", "/static/")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or a Host header's name) is this machine only."""
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Policy:
    """How the dashboard lets people in. ``auth`` is ``user:password`` (basic auth), ``token``
    a bearer token (a login form turns it into a cookie); at most one of them."""

    auth: str | None = None
    token: str | None = None
    read_only: bool = False
    #: the address served on; loopback without auth makes the Host check strict
    host: str = "127.0.0.1"
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        if self.auth is not None and self.token is not None:
            raise ConfigError("pass --auth or --token, not both")
        if self.auth is not None and (":" not in self.auth or not self.auth.split(":", 1)[1]):
            raise ConfigError("--auth takes user:password (a password that is not empty)")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("--token must be at least 8 characters long")

    @property
    def open(self) -> bool:
        return self.auth is None and self.token is None

    def check_bind(self) -> None:
        """Refuse to serve on a non-loopback address without auth."""
        if self.open and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve the dashboard on {self.host} without authentication: pass "
                "--auth user:password or --token TOKEN, or bind 127.0.0.1"
            )

    def session(self) -> str:
        """The cookie value a login with the right token gets (never the token itself)."""
        assert self.token is not None
        return hmac.new(self._key, self.token.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def identify(self, headers: Headers) -> str | None:
        """How the request proved who it is (``open``, ``basic``, ``bearer``, ``cookie``)."""
        if self.open:
            return "open"
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if self.auth is not None:
            if scheme.lower() != "basic":
                return None
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except ValueError:
                return None
            return "basic" if hmac.compare_digest(decoded, self.auth.encode()) else None
        if scheme.lower() == "bearer" and self.token_matches(value.strip()):
            return "bearer"
        cookie = cookie_parser(headers.get("cookie", "")).get(COOKIE, "")
        if cookie and hmac.compare_digest(cookie.encode(), self.session().encode()):
            return "cookie"
        return None


class Guard:
    """The ASGI middleware that applies a :class:`Policy` to every HTTP request."""

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> Response | None:
        """The response that refuses this request, or None to let it through."""
        policy = self.policy
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        name = urlsplit(f"//{host}").hostname or ""
        if policy.open and not is_loopback(name):
            return _error(
                403, f"Host {host!r} is not this machine: open the dashboard on 127.0.0.1"
            )
        path: str = scope["path"]
        method: str = scope["method"]
        unsafe = method not in ("GET", "HEAD", "OPTIONS")
        origin = headers.get("origin")
        if unsafe and origin is not None and urlsplit(origin).netloc != host:
            return _error(403, f"cross-site request from {origin} refused")
        if path.startswith(OPEN_PATHS):
            return None
        via = policy.identify(headers)
        if via is None:
            if policy.auth is not None:
                return _error(401, "wrong or missing user and password", basic=True)
            if path.startswith("/api/"):
                return _error(401, "wrong or missing token: send Authorization: Bearer TOKEN")
            return RedirectResponse("/login", status_code=303)
        if unsafe and path != "/logout":
            if policy.read_only:
                return _error(403, "the dashboard is read-only (started with --read-only)")
            given = headers.get(CSRF_HEADER, "")
            if via != "bearer" and not hmac.compare_digest(given.encode(), policy.csrf.encode()):
                return _error(403, f"missing or wrong {CSRF_HEADER} header: reload the page")
        return None


def _error(status: int, message: str, *, basic: bool = False) -> Response:
    headers = {"WWW-Authenticate": 'Basic realm="jsqueue dashboard"'} if basic else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def dumps(value: object) -> str:
    """JSON safe to put inside a ``<script>`` element (no ``</script>`` can close it)."""
    text = json.dumps(value, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
