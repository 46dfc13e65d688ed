"""Checks of the fields a job carries on the wire: what a worker refuses before it runs anything.

A producer in another language (or a hostile one) can put anything in an envelope. Every field is
checked for its type and its rules when the envelope is decoded, so a wrong one is dead-lettered
at once as ``malformed``, naming the field, and never reaches the task, a KV key or a subject.
Each check raises :class:`FieldError` with a message that names the field and the rule.
"""

from __future__ import annotations

import math
import re
from typing import Any

from jsqueue.config import (
    JOB_ID_RULE,
    PRIORITIES,
    PRIORITY_SCALE,
    is_job_id,
    is_queue_name,
    shorten,
)

#: The longest task name a worker accepts (it appears in logs, records and headers).
TASK_NAME_MAX = 200
#: The most canvas steps one envelope may carry after itself.
LINK_MAX = 1000
#: Send options a signature may carry, and the type each must have.
SIGNATURE_OPTIONS = frozenset(
    {"queue", "countdown", "eta", "expires", "expires_at", "job_id", "headers", "priority"}
)
#: How deep canvas nodes may nest (chords in chords in chains ...).
NODE_DEPTH_MAX = 32
#: Members a group or a chord's header inside a canvas node may list (a large one travels in
#: the object store, as any large envelope does).
GROUP_MAX = 100_000


_NOTIFY_RE = re.compile(r"[a-z][a-z0-9_]{0,31}\.notify\.[A-Za-z0-9_-]{1,64}")


class FieldError(ValueError):
    """A field of an envelope breaks its rule."""


def job_id(value: Any, field: str = "id") -> str:
    if value is None:
        raise FieldError(f"field {field!r} is missing")
    if not is_job_id(value):
        raise FieldError(f"field {field!r}: job id {shorten(value)} is not allowed: {JOB_ID_RULE}")
    return str(value)


def optional_job_id(value: Any, field: str) -> str | None:
    return None if value is None else job_id(value, field)


def task_name(value: Any, field: str = "task") -> str:
    if value is None:
        raise FieldError(f"field {field!r} is missing")
    if not isinstance(value, str) or not 0 < len(value) <= TASK_NAME_MAX:
        raise FieldError(
            f"field {field!r}: a task name is a string of 1-{TASK_NAME_MAX} characters, "
            f"not {shorten(value)}"
        )
    if not value.isprintable():
        raise FieldError(f"field {field!r}: task name {shorten(value)} has control characters")
    return str(value)


def queue(value: Any, field: str = "queue") -> str:
    if not is_queue_name(value):
        raise FieldError(
            f"field {field!r}: queue {shorten(value)} must be 1-64 letters, digits, '_' or '-'"
        )
    return str(value)


def number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FieldError(f"field {field!r}: expected a number (Unix seconds), not {shorten(value)}")
    return float(value)


def optional_number(value: Any, field: str) -> float | None:
    return None if value is None else number(value, field)


def args(value: Any, field: str = "args") -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise FieldError(f"field {field!r}: expected a list of arguments, not {shorten(value)}")
    return tuple(value)


def kwargs(value: Any, field: str = "kwargs") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(f"field {field!r}: expected an object of arguments, not {shorten(value)}")
    return value


def headers(value: Any, field: str = "headers") -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FieldError(f"field {field!r}: expected an object of strings, not {shorten(value)}")
    return value


def notify(value: Any) -> str | None:
    """``<prefix>.notify.<token>``: a subject a worker may publish a small notice to. Nothing
    else: a worker may publish to ``$JS.API.>``, so an envelope must not choose its subject."""
    if value is None:
        return None
    if not isinstance(value, str) or not _NOTIFY_RE.fullmatch(value):
        raise FieldError(
            f"field 'notify': {shorten(value)} is not <prefix>.notify.<token> (token: 1-64 "
            "letters, digits, '_' or '-')"
        )
    return value


def priority(value: Any, field: str = "priority") -> int | None:
    """A priority level (see :data:`jsqueue.config.PRIORITY_SCALE`) or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value not in PRIORITIES:
        raise FieldError(f"field {field!r}: {shorten(value)} is off the scale {PRIORITY_SCALE}")
    return value


def args_object(value: Any, job: str) -> str | None:
    """``args.<job id>``: the object holding this job's large arguments."""
    if value is None:
        return None
    if value != f"args.{job}":
        raise FieldError(f"field 'args_object': {shorten(value)} is not args.<this job's id>")
    return str(value)


def chord(value: Any, field: str = "chord") -> dict[str, Any] | None:
    """``{"id": chord id, "index": 0.., "size": 1..}`` or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError(f"field {field!r}: expected an object, not {shorten(value)}")
    job_id(value.get("id"), f"{field}.id")
    size, index = value.get("size"), value.get("index")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise FieldError(f"field '{field}.size': expected a whole number >= 1, not {shorten(size)}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < size:
        raise FieldError(
            f"field '{field}.index': expected a whole number from 0 to {size - 1}, "
            f"not {shorten(index)}"
        )
    return value


def link(value: Any) -> tuple[dict[str, Any], ...]:
    """What follows this job: canvas nodes (see :mod:`jsqueue.nodes`), checked."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > LINK_MAX:
        raise FieldError(
            f"field 'link': expected a list of at most {LINK_MAX} canvas nodes, not "
            f"{shorten(value)}"
        )
    return tuple(node(step, f"link[{i}]", 0) for i, step in enumerate(value))


def on_error(value: Any, field: str = "on_error", depth: int = 0) -> tuple[dict[str, Any], ...]:
    """Error callbacks: task nodes; one marked ``once`` (for a whole canvas) has its job id."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > LINK_MAX:
        raise FieldError(f"field {field!r}: expected a list of signatures, not {shorten(value)}")
    for i, handler in enumerate(value):
        node(handler, f"{field}[{i}]", depth + 1)
        shape = _kind(handler)
        if shape != "task":
            raise FieldError(f"field '{field}[{i}]': an error callback is a task, not a {shape}")
        once = handler.get("once", False)
        if not isinstance(once, bool):
            raise FieldError(f"field '{field}[{i}].once': expected true or false")
        if once:
            job_id((handler.get("options") or {}).get("job_id"), f"{field}[{i}].options.job_id")
    return tuple(value)


def node(value: Any, field: str, depth: int) -> dict[str, Any]:
    """A canvas node (task, group or chord), checked to ``NODE_DEPTH_MAX`` levels."""
    if depth > NODE_DEPTH_MAX:
        raise FieldError(f"field {field!r}: canvas nested deeper than {NODE_DEPTH_MAX} levels")
    if not isinstance(value, dict):
        raise FieldError(f"field {field!r}: expected a canvas node object, not {shorten(value)}")
    shape = _kind(value)
    if shape == "group":
        _nodes(value["group"], f"{field}.group", depth)
    elif shape == "chord":
        job_id(value.get("id"), f"{field}.id")
        _nodes(value["header"], f"{field}.header", depth)
        node(value.get("body"), f"{field}.body", depth + 1)
    else:
        signature(value, field)
        if value.get("link") is not None:
            if not isinstance(value["link"], list) or len(value["link"]) > LINK_MAX:
                raise FieldError(f"field '{field}.link': expected a list of canvas nodes")
            for i, step in enumerate(value["link"]):
                node(step, f"{field}.link[{i}]", depth + 1)
        if value.get("chord") is not None:
            chord(value["chord"], f"{field}.chord")
        on_error(value.get("on_error"), f"{field}.on_error", depth)
    return value


def _nodes(value: Any, field: str, depth: int) -> None:
    if not isinstance(value, list) or len(value) > GROUP_MAX:
        raise FieldError(
            f"field {field!r}: expected a list of at most {GROUP_MAX:,} canvas nodes, not "
            f"{shorten(value)}"
        )
    for i, part in enumerate(value):
        node(part, f"{field}[{i}]", depth + 1)


def _kind(value: dict[str, Any]) -> str:
    return "chord" if "header" in value else "group" if "group" in value else "task"


def signature(value: Any, field: str) -> dict[str, Any]:
    """A signature as JSON (see :meth:`jsqueue.canvas.Signature.to_dict`), checked."""
    if not isinstance(value, dict):
        raise FieldError(f"field {field!r}: expected a signature object, not {shorten(value)}")
    task_name(value.get("task"), f"{field}.task")
    args(value.get("args", []), f"{field}.args")
    kwargs(value.get("kwargs", {}), f"{field}.kwargs")
    if not isinstance(value.get("immutable", False), bool):
        raise FieldError(f"field '{field}.immutable': expected true or false")
    options = value.get("options", {})
    if not isinstance(options, dict):
        raise FieldError(f"field '{field}.options': expected an object, not {shorten(options)}")
    for name, option in options.items():
        _option(name, option, f"{field}.options.{name}")
    return value


def _option(name: str, value: Any, field: str) -> None:
    if name not in SIGNATURE_OPTIONS:
        raise FieldError(f"field {field!r}: unknown option (known: {sorted(SIGNATURE_OPTIONS)})")
    if value is None:
        return
    if name == "queue":
        queue(value, field)
    elif name == "job_id":
        job_id(value, field)
    elif name == "headers":
        headers(value, field)
    elif name == "priority":
        priority(value, field)
    elif number(value, field) < 0 and name == "countdown":
        raise FieldError(f"field {field!r}: a countdown is seconds from now, at least 0")
