"""Signatures: a task name with arguments and options, that can be sent later or composed."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from jsqueue.errors import ConfigError

_OPTION_NAMES = frozenset({"queue", "countdown", "eta", "expires", "job_id", "headers"})


@dataclass(frozen=True)
class Signature:
    """A task call to make later: ``add.s(2, 3)`` or, immutable, ``add.si(2, 3)``."""

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    immutable: bool = False

    def set(self, **options: Any) -> Signature:
        """A copy with these send options (queue, countdown, eta, expires, job_id, headers)."""
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise ConfigError(f"unknown signature option(s): {', '.join(sorted(unknown))}")
        return replace(self, options={**self.options, **options})

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": {k: v for k, v in self.options.items() if k != "eta"},
            "immutable": self.immutable,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Signature:
        return cls(
            task=str(doc["task"]),
            args=tuple(doc.get("args", ())),
            kwargs=dict(doc.get("kwargs", {})),
            options=dict(doc.get("options", {})),
            immutable=bool(doc.get("immutable", False)),
        )
