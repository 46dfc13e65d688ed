"""One NATS client connection: opening it (failing fast with one line that names the URL),
checking the server, watching it (disconnects, reconnects, a close for good), core pub/sub.

Part of the wire package; nothing outside it sees the nats-py client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from jsqueue.config import MIN_SERVER_VERSION, Settings, redact_url
from jsqueue.errors import ConnectError
from jsqueue.wire.errors import NOT_READY

log = logging.getLogger("jsqueue.wire.broker")

#: The subject in nats-py's text of a refused publish: 'permissions violation for publish to "x"'.
_REFUSED_PUBLISH = re.compile(r'publish to "([^"]+)"')


class Connection:
    """A connected nats-py client with JetStream, and what happens to it."""

    def __init__(self, settings: Settings, client_name: str) -> None:
        self.settings = settings
        self.client_name = client_name
        self.nc = NatsClient()
        self.js: JetStreamContext | None = None
        self.url = ""
        self._outage = False
        self._reconnect_listeners: list[Callable[[], Awaitable[None]]] = []
        self._refusal_listeners: list[Callable[[str, str], None]] = []
        self._last_error: BaseException | None = None
        self._auth_error: BaseException | None = None
        self.refused = ""
        self._closing = False
        self._opened = False
        #: set when nats-py closed the connection for good (not by :meth:`close`)
        self.lost = asyncio.Event()

    # -- opening -------------------------------------------------------------------------------

    async def open(self, url: str) -> None:
        """Connect to ``url`` (comma-separated servers); :class:`ConnectError` in one line."""
        self.url = url
        servers = [part.strip() for part in url.split(",")]
        options: dict[str, Any] = {
            "servers": servers,
            "name": self.client_name,
            "connect_timeout": max(1, round(self.settings.connect_timeout)),
            # During the first connect each server is tried twice, so a bad URL or wrong
            # credentials fail fast; afterwards we reconnect forever (set below).
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.25,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnect,
            "reconnected_cb": self._on_reconnect,
            "closed_cb": self._on_closed,
            **self._auth_options(),
        }
        # Each server twice, each try within connect_timeout, and some slack. The deadline also
        # covers a nats-py connect that stalls after a failed TLS handshake instead of raising.
        deadline = 2 * len(servers) * (self.settings.connect_timeout + 0.5) + 1
        try:
            await asyncio.wait_for(self.nc.connect(**options), deadline)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await self.nc.close()
            raise self._connect_error(url, exc) from None
        self.nc.options["max_reconnect_attempts"] = -1
        self.nc.options["reconnect_time_wait"] = 1
        self.js = self.nc.jetstream(timeout=self.settings.request_timeout)
        self._opened = True

    def _connect_error(self, url: str, exc: BaseException) -> ConnectError:
        cause = exc
        if isinstance(exc, nats.errors.NoServersError | TimeoutError):
            # The underlying cause (refused, auth) reached us through the error callback; an
            # authorization failure wins over the "connection reset" that may follow it.
            cause = self._auth_error or self._last_error or exc
        text = str(cause) or type(cause).__name__
        if isinstance(cause, ssl.SSLError):
            return ConnectError(
                f"TLS with NATS at {redact_url(url)} failed ({text}); give the server's CA with "
                "tls_ca_file=... (and tls_cert_file/tls_key_file if it wants a client cert)"
            )
        tls = url.startswith("tls://") or bool(self.settings.tls_ca_file)
        closed = isinstance(cause, ConnectionResetError | BrokenPipeError)
        if tls and closed and not self.settings.tls_cert_file:
            # TLS 1.3: a server that wants a client certificate may close the connection after
            # the handshake instead of the alert reaching us first
            return ConnectError(
                f"TLS with NATS at {redact_url(url)} failed ({text}: the server closed the "
                "connection after the handshake, as it does when a client certificate is "
                "required); give tls_cert_file=... and tls_key_file=..."
            )
        if _is_auth_error(cause):
            return ConnectError(
                f"NATS at {redact_url(url)} refused the credentials ({text}); check the user, "
                "password, token or creds file"
            )
        return ConnectError(
            f"cannot reach NATS at {redact_url(url)} ({text}); is the server running? "
            "(`jsqueue server` starts one)"
        )

    def _auth_options(self) -> dict[str, Any]:
        s = self.settings
        options: dict[str, Any] = {}
        if s.creds_file:
            options["user_credentials"] = s.creds_file
        if s.nkey_seed_file:
            options["nkeys_seed"] = s.nkey_seed_file
        if s.tls_ca_file or s.tls_cert_file:
            ctx = ssl.create_default_context(cafile=s.tls_ca_file)
            if s.tls_cert_file:
                ctx.load_cert_chain(s.tls_cert_file, s.tls_key_file)
            options["tls"] = ctx
        return options

    async def check_server(self) -> None:
        """Refuse a server too old for jsqueue, or one without JetStream."""
        version = self.nc.connected_server_version
        found = (version.major, version.minor, version.patch)
        if found < MIN_SERVER_VERSION:
            wanted = ".".join(map(str, MIN_SERVER_VERSION))
            have = ".".join(map(str, found))
            raise ConnectError(
                f"NATS at {self.safe_url} is version {have}; jsqueue needs {wanted} or newer "
                "(message schedules). Run `jsqueue server` for the bundled server, or upgrade"
            )
        try:
            await self.jetstream.account_info()
        except nats.js.errors.ServiceUnavailableError as exc:
            if exc.err_code is None:  # "no responders": nothing serves the JetStream API
                raise ConnectError(
                    f"NATS at {self.safe_url} has no JetStream; start the server with -js (or a "
                    "`jetstream {}` block), or run `jsqueue server`"
                ) from None
        except NOT_READY:
            pass  # retried by the caller: a cluster may still be electing its leader
        except (nats.js.errors.APIError, nats.errors.Error) as exc:
            raise ConnectError(
                f"NATS at {self.safe_url} has no JetStream ({type(exc).__name__}); start the "
                "server with -js (or a `jetstream {}` block), or run `jsqueue server`"
            ) from None

    # -- what it is ----------------------------------------------------------------------------

    @property
    def jetstream(self) -> JetStreamContext:
        if self.js is None:
            raise ConnectError("not connected; use `async with app:` or `await app.connect()`")
        return self.js

    @property
    def safe_url(self) -> str:
        """The URL connected to, without secrets."""
        return redact_url(self.url) if self.url else "(not connected)"

    @property
    def is_connected(self) -> bool:
        return self._opened and self.nc.is_connected

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    @property
    def server_version(self) -> str:
        version = self.nc.connected_server_version
        return f"{version.major}.{version.minor}.{version.patch}"

    @property
    def lost_reason(self) -> str:
        """Why the connection was lost for good, as far as nats-py said."""
        error: BaseException | None = self.nc.last_error or self._last_error
        return str(error) if error else "no reason given"

    def on_reconnect(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Call ``callback`` after every reconnect (pull loops re-issue their requests)."""
        self._reconnect_listeners.append(callback)

    def on_refusal(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(subject, text)`` when the server refuses a publish (a permission)."""
        self._refusal_listeners.append(callback)

    # -- core pub/sub (inside the wire package) -----------------------------------------------

    async def publish(
        self, subject: str, payload: bytes, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        await self.nc.publish(subject, payload, reply=reply, headers=headers)

    async def subscribe(
        self, subject: str, callback: Callable[[Msg], Awaitable[None]]
    ) -> Subscription:
        return await self.nc.subscribe(
            subject, cb=callback, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    def new_inbox(self) -> str:
        return str(self.nc.new_inbox())

    async def flush(self) -> None:
        await self.nc.flush()

    async def close(self) -> None:
        self._closing = True
        nc = self.nc
        if nc.is_closed:
            return
        try:
            await nc.drain()
        except (TimeoutError, nats.errors.Error, OSError):
            await nc.close()

    # -- callbacks -----------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        if _is_auth_error(exc):
            self._auth_error = exc
        if "ermissions violation" in str(exc):
            self.refused = str(exc).removeprefix("nats: ")
            refused = _REFUSED_PUBLISH.search(self.refused)
            if refused:
                for listener in self._refusal_listeners:
                    listener(refused.group(1), self.refused)
        if not self._opened:
            return  # still connecting: the ConnectError will say it
        if not self._outage:
            log.warning("NATS connection problem at %s: %s", self.safe_url, exc or type(exc))

    async def _on_disconnect(self) -> None:
        if self._opened and not self.nc.is_closed and not self._outage:
            self._outage = True
            log.warning("disconnected from NATS at %s; reconnecting", self.safe_url)

    async def _on_reconnect(self) -> None:
        self._outage = False
        log.warning("reconnected to NATS at %s", self.safe_url)
        for callback in list(self._reconnect_listeners):
            await callback()

    async def _on_closed(self) -> None:
        if not self._closing and self._opened:
            self.lost.set()


def _is_auth_error(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "uthorization" in str(exc)
