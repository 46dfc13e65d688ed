"""The systems measured, by key: ``(title, "module:PeerClass")``, imported only when run."""

from __future__ import annotations

import importlib

from bench.peers.base import Peer

PEERS: dict[str, tuple[str, str]] = {
    "jsqueue": ("jsqueue + NATS JetStream", "bench.peers.jsqueue_nats:JsqueuePeer"),
    "celery-redis": ("Celery + Redis", "bench.peers.celery_redis:CeleryRedisPeer"),
    "celery-rabbitmq": ("Celery + RabbitMQ", "bench.peers.celery_rabbitmq:CeleryRabbitPeer"),
    "dramatiq": ("Dramatiq + RabbitMQ", "bench.peers.dramatiq_rabbitmq:DramatiqPeer"),
    "arq": ("arq + Redis", "bench.peers.arq_redis:ArqPeer"),
    "taskiq": ("taskiq + taskiq-nats (JetStream)", "bench.peers.taskiq_nats:TaskiqPeer"),
    "raw": ("raw nats-py JetStream (ceiling)", "bench.peers.raw_nats:RawNatsPeer"),
    "raw-loop": (
        "raw nats-py, hand-made pull loop (ceiling)",
        "bench.peers.raw_loop:RawLoopPeer",
    ),
}


def load(key: str) -> Peer:
    """Import and build a peer; ImportError means its library is not installed."""
    module_name, _, attr = PEERS[key][1].partition(":")
    peer_class: type[Peer] = getattr(importlib.import_module(module_name), attr)
    return peer_class()
