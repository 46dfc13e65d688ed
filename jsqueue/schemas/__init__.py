"""JSON Schemas (draft 2020-12) of what jsqueue puts on the wire, for producers and readers in
any language: the job envelope, the result record and the dead-letter record.

``docs/protocol.md`` is the prose beside them; ``tests/integration/test_protocol.py`` validates
what a real producer and worker emit against them, so they stay true. They ship in the wheel as
package data: ``load("envelope")`` reads one without importing anything else of jsqueue.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

#: The schemas shipped, by name (each is ``<name>.json`` beside this module).
NAMES = ("envelope", "result", "dead_letter")


def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (one of :data:`NAMES`) as a dict."""
    if name not in NAMES:
        raise ValueError(f"no schema named {name!r}; there are {', '.join(NAMES)}")
    text = resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
