"""Signatures: a task call to make later, as a plain value (``add.s(2, 3)``).

A signature is data: a task name, arguments, send options and whether it takes the previous
result (``immutable``). It travels as JSON in canvas fields (:meth:`Signature.to_dict`), and can be
sent by the app it is bound to. Composing signatures is :mod:`jsqueue.canvas`.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from jsqueue.envelope import Envelope
from jsqueue.errors import ConfigError
from jsqueue.services.deps import Deps
from jsqueue.services.handles import AsyncResult
from jsqueue.services.producer import send, signature_envelope
from jsqueue.sync import SyncHost, blocking

_OPTION_NAMES = frozenset({"queue", "countdown", "eta", "expires", "job_id", "headers"})


@dataclass(frozen=True)
class Signature:
    """A task call to make later: ``add.s(2, 3)`` or, immutable, ``add.si(2, 3)``.

    Send it with ``await sig.delay(*more_args)``; compose it with :class:`chain`, :class:`group`
    and :class:`chord`; schedule it with ``app.add_periodic``.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    immutable: bool = False
    app: Deps | None = field(default=None, compare=False, repr=False)

    def set(self, **options: Any) -> Signature:
        """A copy with these send options (queue, countdown, eta, expires, job_id, headers)."""
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise ConfigError(f"unknown signature option(s): {', '.join(sorted(unknown))}")
        return replace(self, options={**self.options, **options})

    def to_dict(self) -> dict[str, Any]:
        """The signature as JSON data (without ``eta``, which is a moment, not a delay)."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": {k: v for k, v in self.options.items() if k != "eta"},
            "immutable": self.immutable,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], app: Deps | None = None) -> Signature:
        return cls(
            task=str(doc["task"]),
            args=tuple(doc.get("args", ())),
            kwargs=dict(doc.get("kwargs", {})),
            options=dict(doc.get("options", {})),
            immutable=bool(doc.get("immutable", False)),
            app=app,
        )

    def _app(self) -> Deps:
        if self.app is None:
            raise ConfigError(
                f"signature of {self.task} is not bound to an app; make it with task.s() or "
                "app.signature()"
            )
        return self.app

    def envelope(self, extra_args: Sequence[Any] = (), **fields: Any) -> Envelope:
        """The job this signature describes, with ``extra_args`` in front (unless immutable)."""
        app = self._app()
        doc = {**self.to_dict(), "options": self.options}
        return signature_envelope(app.settings, app.route(self.task), doc, extra_args, **fields)

    def delay(self, *args: Any) -> Coroutine[Any, Any, AsyncResult[Any]]:
        """Send it, with ``args`` in front of the signature's own (a partial call)."""
        return self.apply_async(args)

    async def apply_async(self, args: Sequence[Any] = (), **options: Any) -> AsyncResult[Any]:
        """Send it with extra leading ``args`` and send options."""
        sig = self.set(**options) if options else self
        broker = await sig._app().broker()
        env = sig.envelope(args, notify=broker.notify_subject)
        await send(broker, env)
        return AsyncResult(sig._app(), env.id, self.task, notified=True)

    def _sync_host(self) -> SyncHost:
        return self._app()

    delay_sync = blocking(delay)
    apply_async_sync = blocking(apply_async)
