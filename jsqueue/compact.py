"""Compact JSON as jsqueue sends it, and the usual documents read without ``json.loads``'
detours.

``json.dumps``/``json.loads`` wrap the C encoder and scanner in Python calls (and, for bytes,
an encoding detection) that cost more than the work for a small document; jobs, records and
acks are small and many. What is written here is byte for byte what ``JSONEncoder.encode``
writes; what is read is what ``json.loads`` reads, and anything unusual goes to it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

from jsqueue.errors import SerializeError

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_dumps = _ENCODER.encode
#: what ``json.loads`` runs on a document once it is text (a C scanner: ``(value, end)``)
scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
#: what ``JSONEncoder.encode`` runs for a document (the C encoder; None without it)
_make_encoder: Callable[..., Callable[[Any, int], Sequence[str]]] | None = (
    json.encoder.c_make_encoder  # type: ignore[attr-defined]
)
_encode_string = json.encoder.encode_basestring


def to_json(doc: Any, *, what: str) -> bytes:
    """Dump a document as compact JSON bytes; :class:`SerializeError` names ``what`` failed."""
    try:
        return write(doc)
    except (RecursionError, TypeError, ValueError) as exc:
        raise unencodable(exc, what) from None


def write(doc: Any) -> bytes:
    """``_dumps(doc).encode()``, by the C encoder ``JSONEncoder.encode`` would build for it
    (the same arguments), made once per thread instead of once per document. Its circular
    check's markers are empty after each document it writes; after one it failed on, they
    are emptied here, so that nothing stays marked."""
    if _make_encoder is None or not isinstance(doc, dict):
        return _dumps(doc).encode()
    try:
        run, markers = _per_thread.encoder
    except AttributeError:
        run, markers = _per_thread.encoder = _new_encoder()
    try:
        return "".join(run(doc, 0)).encode()
    except BaseException:
        if markers is not None:
            markers.clear()
        raise


def _new_encoder() -> tuple[Callable[[Any, int], Sequence[str]], dict[int, Any] | None]:
    assert _make_encoder is not None
    e = _ENCODER
    markers: dict[int, Any] | None = {} if e.check_circular else None
    run = _make_encoder(
        markers,
        e.default,
        _encode_string,
        None,  # the encoder's indent, which is None (else encode would not use the C one)
        e.key_separator,
        e.item_separator,
        e.sort_keys,
        e.skipkeys,
        e.allow_nan,
    )
    return run, markers


_per_thread = threading.local()


def unencodable(exc: BaseException, what: str) -> SerializeError:
    if isinstance(exc, RecursionError):
        return SerializeError(f"{what} nests too deeply to be sent as JSON")
    return SerializeError(
        f"{what} cannot be sent as JSON ({exc}); use JSON types (str, int, float, bool, "
        "None, list, dict) or serializer='cloudpickle'"
    )


def read_object(data: bytes) -> dict[str, Any] | None:
    """``json.loads(data)`` if ``data`` is the UTF-8 text of one JSON object with nothing
    around it; None for anything else (for ``json.loads`` to read, or to explain). A payload
    that starts ``{`` and parses as UTF-8 is one ``json.loads`` decodes as UTF-8 too."""
    if data[:1] != b"{":
        return None
    try:
        text = data.decode()
        doc, end = scan(text, 0)
    except Exception:  # not UTF-8, not JSON, too deep: json.loads says which
        return None
    return doc if end == len(text) and type(doc) is dict else None
