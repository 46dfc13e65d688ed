"""Canvas nodes: what a chain, group or chord is on the wire, and how nodes compose.

A canvas travels as JSON nodes inside envelopes (a job's ``link`` is the node that follows it):

- a **task** node is a signature (``{"task", "args", "kwargs", "options", "immutable"}``) with,
  optionally, ``link``: ``[node]``, what runs after it with its result; ``chord``: the chord it
  completes as a member (``{"id", "index", "size"}``); ``on_error``: error callbacks;
- a **group** node is ``{"group": [node, ...]}``: members that run in parallel, each given the
  same previous result;
- a **chord** node is ``{"id": chord id, "header": [node, ...], "body": node}``: the header runs
  in parallel and the body once, with the list of the header's results.

Every task node gets its job id when the canvas is built, so handles exist before anything runs
and a resent step is deduplicated. These functions are pure: they compose and inspect nodes;
sending them is :mod:`jsqueue.services.continuation`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jsqueue.envelope import new_job_id

Node = dict[str, Any]


def kind(node: Node) -> str:
    """``task``, ``group`` or ``chord``."""
    if "header" in node:
        return "chord"
    if "group" in node:
        return "group"
    return "task"


def job_id(node: Node) -> str:
    """The job id of a task node."""
    return str(node["options"]["job_id"])


def then(first: Node, after: Node) -> Node:
    """``first``, then ``after`` with ``first``'s result (Celery's ``first | after``).

    A group followed by something becomes a chord whose body is that something, as in Celery:
    the next step gets the list of the group's results.
    """
    shape = kind(first)
    if shape == "group":
        return {"id": _body_id(after), "header": list(first["group"]), "body": after}
    if shape == "chord":
        return {**first, "body": then(first["body"], after)}
    following = next_node(first)
    return {**first, "link": [after if following is None else then(following, after)]}


def fold(steps: Sequence[Node]) -> Node | None:
    """A chain of ``steps`` as one node (None for no steps)."""
    chained: Node | None = None
    for step in reversed(steps):
        chained = step if chained is None else then(step, chained)
    return chained


def next_node(node: Node) -> Node | None:
    """What follows a task node: its ``link`` folded (older envelopes list several steps)."""
    return fold(node.get("link") or [])


def member(node: Node, membership: dict[str, Any]) -> Node:
    """``node`` as a member of a chord: the job that ends it (the last of a chain, a chord's
    body) counts for the chord."""
    shape = kind(node)
    if shape == "chord":
        return {**node, "body": member(node["body"], membership)}
    if shape == "group":
        raise TypeError("a group is flattened into a chord's header, not made one member")
    following = next_node(node)
    if following is None:
        return {**node, "chord": membership}
    return {**node, "link": [member(following, membership)]}


def task_nodes(node: Node) -> Iterator[Node]:
    """Every task node in ``node``, depth first."""
    shape = kind(node)
    if shape == "group":
        for part in node["group"]:
            yield from task_nodes(part)
    elif shape == "chord":
        for part in node["header"]:
            yield from task_nodes(part)
        yield from task_nodes(node["body"])
    else:
        yield node
        following = next_node(node)
        if following is not None:
            yield from task_nodes(following)


def map_tasks(node: Node, change: Callable[[Node], Node]) -> Node:
    """``node`` with ``change`` applied to every task node in it."""
    shape = kind(node)
    if shape == "group":
        return {**node, "group": [map_tasks(part, change) for part in node["group"]]}
    if shape == "chord":
        header = [map_tasks(part, change) for part in node["header"]]
        return {**node, "header": header, "body": map_tasks(node["body"], change)}
    changed = change(node)
    following = next_node(node)
    if following is not None:
        changed = {**changed, "link": [map_tasks(following, change)]}
    return changed


def terminal(node: Node) -> Any:
    """The id of the job whose result is ``node``'s (a list of them for a group)."""
    shape = kind(node)
    if shape == "group":
        return [terminal(part) for part in node["group"]]
    if shape == "chord":
        return terminal(node["body"])
    following = next_node(node)
    return job_id(node) if following is None else terminal(following)


def with_defaults(node: Node, options: dict[str, Any]) -> Node:
    """``node`` with send ``options`` (as on the wire) on its first jobs, where they set none
    of their own."""
    if not options:
        return node
    shape = kind(node)
    if shape == "group":
        return {**node, "group": [with_defaults(part, options) for part in node["group"]]}
    if shape == "chord" and not node["header"]:
        return {**node, "body": with_defaults(node["body"], options)}
    if shape == "chord":
        return {**node, "header": [with_defaults(part, options) for part in node["header"]]}
    return {**node, "options": {**options, **node.get("options", {})}}


def with_errbacks(node: Node, errbacks: Sequence[Node], *, once: bool) -> Node:
    """Every task of ``node`` with the error callbacks. With ``once`` (a chain's or a chord's)
    they run once for the whole canvas: each gets its job id now, and the first job to fail
    claims it. Without (a group's, as in Celery) they run for each member that fails."""
    marked = [
        {**e, "once": True, "options": {**e.get("options", {}), "job_id": new_job_id()}}
        if once
        else e
        for e in errbacks
    ]
    return map_tasks(node, lambda t: {**t, "on_error": [*t.get("on_error", []), *marked]})


def _body_id(after: Node) -> str:
    """A chord is named after the job that calls it back (Celery: the chord's id is the
    body's); a body that is not one job (a group: each member gets the list) gets its own."""
    return job_id(after) if kind(after) == "task" else new_job_id()
