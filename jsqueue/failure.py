"""An exception described as data: type, message and traceback, each bounded, never raising.

Result records and dead letters carry this description, never a pickle. Task code can raise
anything: an exception whose ``__str__`` raises, a 1 MB message, a traceback thousands of frames
deep. :func:`describe` survives all of them and cuts each text to a bound that keeps a record far
below NATS's limits (64 KiB of headers, ``max_payload`` per message).
"""

from __future__ import annotations

import traceback

TYPE_MAX = 200
MESSAGE_MAX = 4_000
TRACEBACK_MAX = 16_000
TRUNCATED = "...[truncated]"


def describe(error: BaseException | None, traceback_text: str = "") -> dict[str, str]:
    """``{"type", "message", "traceback"}`` of ``error`` (empty strings for None);
    ``traceback_text`` stands in for the traceback of an error that crossed processes."""
    if error is None:
        return {"type": "", "message": "", "traceback": ""}
    return {
        "type": cut(type(error).__name__, TYPE_MAX),
        "message": cut(safe_str(error), MESSAGE_MAX),
        "traceback": cut_head(traceback_text or _traceback(error), TRACEBACK_MAX),
    }


def safe_str(error: BaseException) -> str:
    """``str(error)``, or a stand-in when its ``__str__`` raises."""
    try:
        return str(error)
    except Exception as exc:
        return f"<unprintable {type(error).__name__}: its __str__ raised {type(exc).__name__}>"


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line, bounded, for log lines."""
    text = safe_str(error).replace("\n", " ")
    return cut(f"{type(error).__name__}: {text}" if text else type(error).__name__, 500)


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying so."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATED))] + TRUNCATED


def cut_head(text: str, limit: int) -> str:
    """``text`` without its beginning if too long: a traceback's last lines say the most."""
    if len(text) <= limit:
        return text
    return TRUNCATED + text[len(text) - max(0, limit - len(TRUNCATED)) :]


def _traceback(error: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(error))
    except Exception:  # a __str__ or __repr__ that raises, a broken __traceback__
        frames = traceback.format_tb(error.__traceback__) if error.__traceback__ else []
        return "".join(frames) + f"{type(error).__name__}: {safe_str(error)}\n"
