"""The wire package: the only code that imports nats.

Everything jsqueue does on NATS goes through :class:`Broker` and the values here; nats-py's
errors leave this package as jsqueue's (see :mod:`jsqueue.wire.errors`).
"""

from jsqueue.wire.acks import Ack
from jsqueue.wire.broker import Broker
from jsqueue.wire.errors import translate
from jsqueue.wire.kv import Entry, KeyExists, KvStore, PendingCreate
from jsqueue.wire.objects import ObjectStore
from jsqueue.wire.pull import ATTEMPT_HEADER, Delivery, Puller
from jsqueue.wire.streams import ConsumerState, StoredMessage, StreamState

__all__ = [
    "ATTEMPT_HEADER",
    "Ack",
    "Broker",
    "ConsumerState",
    "Delivery",
    "Entry",
    "KeyExists",
    "KvStore",
    "PendingCreate",
    "ObjectStore",
    "Puller",
    "StoredMessage",
    "StreamState",
    "translate",
]
