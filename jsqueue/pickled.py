"""Signed pickles inside JSON documents: for arguments and results JSON cannot carry.

A pickled body travels as ``{"pickle": base64, "sig": hmac}`` with an HMAC-SHA256 signature made
with the app's secret key and bound to what it belongs to (a job id and task name, a result's
key), and is verified before it is unpickled: nothing unsigned or wrongly signed is ever loaded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from jsqueue.errors import DecodeError, SerializeError, SignatureError


def pickle_value(value: Any, secret_key: bytes | None, *, bind: str, what: str) -> dict[str, str]:
    """Pickle ``value`` into ``{"pickle": base64, "sig": hmac}`` fields of a JSON document.

    ``bind`` is mixed into the signature so a signed body cannot be moved to another job.
    """
    if not secret_key:
        raise SerializeError("serializer='cloudpickle' needs the app's secret_key")
    import cloudpickle

    try:
        pickled = cloudpickle.dumps(value)
    except Exception as exc:
        raise SerializeError(f"{what} cannot be pickled: {exc!r}") from None
    return {"pickle": base64.b64encode(pickled).decode(), "sig": _sign(secret_key, bind, pickled)}


def unpickle_value(doc: dict[str, Any], secret_key: bytes | None, *, bind: str, raw: bytes) -> Any:
    """Load the value :func:`pickle_value` stored in ``doc``, verifying its signature first."""
    signature = doc.get("sig")
    if not isinstance(signature, str) or not signature:
        raise SignatureError("pickled payload is unsigned; refused without unpickling", raw=raw)
    if not secret_key:
        raise SignatureError(
            "pickled payload received but this app has no secret_key to verify it; refused "
            "without unpickling",
            raw=raw,
        )
    try:
        pickled = base64.b64decode(doc["pickle"], validate=True)
    except (ValueError, TypeError):
        raise DecodeError("pickled payload is not valid base64", raw=raw) from None
    if not hmac.compare_digest(signature, _sign(secret_key, bind, pickled)):
        raise SignatureError(
            "pickled payload has a wrong signature (another secret_key, or tampered); refused "
            "without unpickling",
            raw=raw,
        )
    import cloudpickle

    try:
        return cloudpickle.loads(pickled)
    except Exception as exc:
        raise DecodeError(f"signed pickle could not be loaded: {exc!r}", raw=raw) from None


def _sign(secret_key: bytes, bind: str, body: bytes) -> str:
    mac = hmac.new(secret_key, bind.encode(), hashlib.sha256)
    mac.update(b"\0")
    mac.update(body)
    return mac.hexdigest()
