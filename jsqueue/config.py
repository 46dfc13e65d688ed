"""Frozen settings of an app, and every name jsqueue puts on the wire.

Settings come from keyword arguments of :class:`jsqueue.App` and, for the URL only, from
``$JSQUEUE_URL`` when the app connects (never at import). Unknown settings are an error that names
them. All durations are seconds.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict
from urllib.parse import urlsplit, urlunsplit

from jsqueue.errors import ConfigError

DEFAULT_URL = "nats://127.0.0.1:4222"
URL_ENV = "JSQUEUE_URL"
#: The oldest nats-server jsqueue runs on: message schedules (delayed jobs) arrived in 2.12.0.
MIN_SERVER_VERSION = (2, 12, 0)

_PREFIX_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_QUEUE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# KV keys and Msg-Ids that become keys may only use these characters; a '.' separates tokens.
_JOB_ID_RE = re.compile(r"[-/_=A-Za-z0-9]+(\.[-/_=A-Za-z0-9]+)*")
JOB_ID_MAX = 200
#: Every KV bucket jsqueue may create, as ``<prefix>_<purpose>``.
BUCKETS = (
    "results",
    "revoked",
    "workers",
    "chords",
    "beat_lease",
    "beat_ticks",
    "beat_state",
    "queues",
    "limits",
)
#: Job priorities: a higher number runs first. Each level of a queue is a subject and a consumer
#: of its own (JetStream has no per-message priority); NORMAL's is the queue's plain subject.
PRIORITY_LOW, PRIORITY_NORMAL, PRIORITY_HIGH, PRIORITY_URGENT = 0, 1, 2, 3
PRIORITIES = range(PRIORITY_LOW, PRIORITY_URGENT + 1)
PRIORITY_SCALE = "0 (low) to 3 (urgent), higher runs first; the default is 1 (normal)"
#: The level above urgent, not for users: jobs coming back from a wait for a limit (a reserved
#: rate-limit start, a concurrency slot) arrive there, so no backlog stands before them.
LEVEL_DUE = 4
#: Every level a queue has a subject and a consumer for.
LEVELS = range(PRIORITY_LOW, LEVEL_DUE + 1)

Serializer = Literal["json", "cloudpickle"]


class SettingsKwargs(TypedDict, total=False):
    """The keyword settings :class:`jsqueue.App` accepts besides ``url`` and ``prefix``."""

    default_queue: str
    ack_wait: float
    max_deliver: int
    max_ack_pending: int
    duplicate_window: float
    serializer: Serializer
    secret_key: str | bytes | None
    provision: bool
    connect_timeout: float
    request_timeout: float
    publish_timeout: float
    result_ttl: float
    max_object_size: int
    track_started: bool
    replicas: int
    dlq_max_age: float
    unknown_task_retries: int
    unknown_task_delay: float
    schedule_retries_after: float
    events: bool
    creds_file: str | None
    nkey_seed_file: str | None
    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None


@dataclass(frozen=True)
class Settings:
    """Every setting of an app. Build it with :meth:`Settings.create`, which validates."""

    name: str
    url: str | None = None
    prefix: str = "jsq"
    default_queue: str = "default"
    #: seconds the server waits for an ack before redelivering; running jobs send heartbeats
    ack_wait: float = 30.0
    #: deliveries of one job before the worker dead-letters it (crash-loop backstop)
    max_deliver: int = 10
    #: jobs a queue may have delivered and unacked, including those waiting on a retry delay
    max_ack_pending: int = 20_000
    duplicate_window: float = 120.0
    serializer: Serializer = "json"
    secret_key: bytes | None = field(default=None, repr=False)
    provision: bool = True
    connect_timeout: float = 5.0
    request_timeout: float = 5.0
    #: total time a publish is retried (same job id, so never stored twice) before it fails
    publish_timeout: float = 15.0
    result_ttl: float = 86_400.0
    #: bytes: the largest return value (or arguments) kept in the object store when it is over
    #: the server's max_payload; above it a result fails once with ResultTooLarge
    max_object_size: int = 64 * 2**20
    track_started: bool = False
    replicas: int = 1
    dlq_max_age: float = 30 * 86_400.0
    #: deliveries of a job whose task is unknown (a rolling deploy?) before it is dead-lettered
    unknown_task_retries: int = 3
    unknown_task_delay: float = 10.0
    #: seconds: a retry that waits at least this long is moved onto a server schedule (the job
    #: is acked and sent again, due then) instead of a ``nak`` with a delay, which would hold
    #: one of the queue's ``max_ack_pending`` slots for the whole wait
    schedule_retries_after: float = 30.0
    events: bool = False
    creds_file: str | None = None
    nkey_seed_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @classmethod
    def create(cls, name: str, **kwargs: Any) -> Settings:
        """Validate keyword settings; an unknown one is a :class:`ConfigError` naming it."""
        known = {f.name for f in dataclasses.fields(cls)} - {"name"}
        for key in kwargs:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown setting {key!r}{hint}")
        secret = kwargs.get("secret_key")
        if isinstance(secret, str):
            kwargs["secret_key"] = secret.encode()
        return cls(name=name, **kwargs)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigError("the app needs a name, e.g. App('billing')")
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ConfigError(
                f"prefix {self.prefix!r} must be lowercase letters, digits or '_', "
                "starting with a letter, at most 32 characters"
            )
        check_queue(self.default_queue)
        for name in ("ack_wait", "duplicate_window", "connect_timeout", "request_timeout"):
            _positive(name, getattr(self, name))
        for name in ("publish_timeout", "result_ttl", "dlq_max_age", "unknown_task_delay"):
            _positive(name, getattr(self, name))
        moved = self.schedule_retries_after
        if not isinstance(moved, int | float) or isinstance(moved, bool) or moved < 0:
            raise ConfigError(
                f"schedule_retries_after must be seconds >= 0 (0: every retry waits on a "
                f"server schedule), not {moved!r}"
            )
        for name in ("max_deliver", "max_ack_pending", "replicas", "max_object_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, not {value!r}")
        if self.unknown_task_retries < 1 or self.unknown_task_retries > self.max_deliver:
            raise ConfigError(
                f"unknown_task_retries must be between 1 and max_deliver ({self.max_deliver})"
            )
        if self.serializer not in ("json", "cloudpickle"):
            raise ConfigError(
                f"serializer must be 'json' or 'cloudpickle', not {self.serializer!r}"
            )
        if self.serializer == "cloudpickle" and not self.secret_key:
            raise ConfigError(
                "serializer='cloudpickle' needs secret_key=...: workers only unpickle payloads "
                "signed with it"
            )
        if self.url is not None:
            check_url(self.url)

    # -- the connection ----------------------------------------------------------------------

    def resolve_url(self) -> str:
        """The URL to connect to: the setting, else ``$JSQUEUE_URL``, else the local default."""
        url = self.url or os.environ.get(URL_ENV) or DEFAULT_URL
        check_url(url)
        return url

    # -- names on the wire -------------------------------------------------------------------

    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix.upper()}_JOBS"

    @property
    def dlq_stream(self) -> str:
        return f"{self.prefix.upper()}_DLQ"

    def queue_subject(self, queue: str, priority: int = PRIORITY_NORMAL) -> str:
        """The subject of ``queue``'s jobs of ``priority`` (NORMAL: ``<prefix>.q.<queue>``,
        others ``<prefix>.q.<queue>.p<level>``)."""
        if priority == PRIORITY_NORMAL:
            return f"{self.prefix}.q.{queue}"
        return f"{self.prefix}.q.{queue}.p{priority}"

    @property
    def queue_subjects(self) -> str:
        return f"{self.prefix}.q.>"

    def schedule_subject(self, queue: str, job_id: str) -> str:
        """Where a delayed job waits: per queue (so status can count it) and per job (so revoke
        can purge exactly it)."""
        return f"{self.prefix}.sched.{queue}.{job_id}"

    @property
    def schedule_subjects(self) -> str:
        return f"{self.prefix}.sched.>"

    def retry_subject(self, queue: str, job_id: str) -> str:
        """Where a job waits out a long retry, on a server schedule (per job, as delayed jobs
        are, so that revoke can purge exactly it)."""
        return f"{self.prefix}.retry.{queue}.{job_id}"

    @property
    def retry_subjects(self) -> str:
        return f"{self.prefix}.retry.>"

    def dlq_subject(self, queue: str) -> str:
        return f"{self.prefix}.dlq.{queue}"

    @property
    def dlq_subjects(self) -> str:
        return f"{self.prefix}.dlq.>"

    def consumer_name(self, queue: str, priority: int = PRIORITY_NORMAL) -> str:
        if priority == PRIORITY_NORMAL:
            return f"{self.prefix}_{queue}"
        return f"{self.prefix}_{queue}_p{priority}"

    def bucket(self, purpose: str) -> str:
        """The KV bucket for ``purpose``, one of :data:`BUCKETS`."""
        if purpose not in BUCKETS:
            raise ConfigError(f"no bucket for {purpose!r}: jsqueue's buckets are {BUCKETS}")
        return f"{self.prefix}_{purpose}"

    @property
    def events_subject(self) -> str:
        return f"{self.prefix}.events"

    @property
    def object_bucket(self) -> str:
        """The object store of results and arguments too large for one message."""
        return f"{self.prefix}_objects"

    @property
    def notify_prefix(self) -> str:
        """Where workers tell waiting processes that a job has an outcome."""
        return f"{self.prefix}.notify"


def is_queue_name(value: object) -> bool:
    """Whether ``value`` may name a queue (it becomes a subject token and a consumer name)."""
    return isinstance(value, str) and _QUEUE_RE.fullmatch(value) is not None


def check_queue(queue: str) -> str:
    """Return ``queue`` if it is a valid queue name, else raise :class:`ConfigError`."""
    if not is_queue_name(queue):
        raise ConfigError(
            f"queue name {queue!r} must be 1-64 letters, digits, '_' or '-' (it becomes a subject)"
        )
    return queue


def remembering(check: Callable[[Any], Any], size: int = 1024) -> Callable[[Any], Any]:
    """``check`` (a pure check that returns what passed or raises) that remembers up to
    ``size`` strings it passed: a set look-up, not a regex, for the names a process sends or
    receives again and again (its queues, its notify subjects)."""
    passed: set[str] = set()

    def checked(value: Any) -> Any:
        if type(value) is str and value in passed:
            return value
        result = check(value)
        if type(result) is str and len(passed) < size:
            passed.add(result)
        return result

    return checked


#: The rule for job ids, as error messages state it.
JOB_ID_RULE = (
    f"use 1-{JOB_ID_MAX} characters from A-Z a-z 0-9 - _ / = and '.' between parts (no ':', "
    "spaces, or leading/trailing '.')"
)


def is_job_id(value: object) -> bool:
    """Whether ``value`` may be a job id: a KV key, a subject token and a Msg-Id."""
    return (
        isinstance(value, str)
        and len(value) <= JOB_ID_MAX
        and _JOB_ID_RE.fullmatch(value) is not None
    )


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it may be a job id (a KV key and Msg-Id), else raise ConfigError."""
    if not is_job_id(job_id):
        raise ConfigError(f"job id {shorten(job_id)} is not allowed: {JOB_ID_RULE}")
    return job_id


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for error messages about hostile input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} chars)"


def check_url(url: str) -> str:
    """Return ``url`` if every comma-separated part is a nats/tls/ws URL, else raise ConfigError."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"URL {url!r} is empty; give e.g. nats://127.0.0.1:4222")
    for part in url.split(","):
        try:
            split = urlsplit(part.strip())
            split.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ConfigError(
                f"URL {redact_url(part)!r} is not a valid URL ({exc}); give e.g. "
                "nats://127.0.0.1:4222 (an IPv6 host in brackets: nats://[::1]:4222)"
            ) from None
        if split.scheme not in ("nats", "tls", "ws", "wss"):
            raise ConfigError(
                f"URL {redact_url(part)!r} must start with nats://, tls://, ws:// or wss://"
            )
        if not split.hostname:
            raise ConfigError(f"URL {redact_url(part)!r} names no host")
    return url


def redact_url(url: str) -> str:
    """The URL with any password or token replaced by ``***``, safe to print in errors."""
    parts = []
    for part in url.split(","):
        try:
            split = urlsplit(part.strip())
            if split.username or split.password:
                user = split.username if split.password else "***"
                secret = ":***" if split.password else ""
                host = split.hostname or ""
                port = f":{split.port}" if split.port else ""
                split = split._replace(netloc=f"{user}{secret}@{host}{port}")
            parts.append(urlunsplit(split))
        except ValueError:  # unparseable: keep only what cannot hold a secret
            parts.append(part.strip().split("@")[-1] if "@" in part else part.strip())
    return ",".join(parts)


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")


def check_priority(value: Any, what: str = "priority") -> int:
    """A priority on the scale (see :data:`PRIORITY_SCALE`), or :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in PRIORITIES:
        raise ConfigError(f"{what} {shorten(value)} is off the scale: {PRIORITY_SCALE}")
    return value
