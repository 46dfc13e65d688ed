"""Prometheus metrics of a worker, as a hook: ``jsqueue worker --metrics-port 9100``.

Needs the ``metrics`` extra (prometheus-client). Counters of job events by task and queue, a
duration histogram by task, the jobs running now, and each consumed queue's depth.
"""

from __future__ import annotations

from typing import Any

from jsqueue.errors import ConfigError
from jsqueue.hooks import Hooks, JobEvent

_FINISHED = frozenset({"succeeded", "retried", "failed", "dead_lettered"})


class PrometheusMetrics(Hooks):
    """Collects job metrics into its own registry; :meth:`serve` exposes them over HTTP."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError(
                "metrics need prometheus-client: pip install 'jsqueue[metrics]'"
            ) from None
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        labels = ["task", "queue"]
        self.counters = {
            kind: prom.Counter(
                f"jsqueue_jobs_{kind}_total",
                f"Jobs {kind.replace('_', '-')}",
                labels,
                registry=self.registry,
            )
            for kind in ("started", "succeeded", "failed", "retried", "dead_lettered")
        }
        self.duration = prom.Histogram(
            "jsqueue_job_duration_seconds",
            "Time a job ran, by task",
            ["task"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300),
        )
        self.running = prom.Gauge(
            "jsqueue_jobs_running", "Jobs running now", ["queue"], registry=self.registry
        )
        self.ready = prom.Gauge(
            "jsqueue_queue_ready", "Jobs waiting in the queue", ["queue"], registry=self.registry
        )
        self.unacked = prom.Gauge(
            "jsqueue_queue_unacked",
            "Jobs delivered and not settled (running or waiting to retry)",
            ["queue"],
            registry=self.registry,
        )
        self._server: Any = None
        #: jobs counted in ``running``: a job dead-lettered before it started (wrong arguments,
        #: unknown task, crash loop) finishes without having been counted
        self._started: set[str] = set()

    async def on_event(self, event: JobEvent) -> None:
        counter = self.counters.get(event.kind)
        if counter is not None:
            counter.labels(event.task, event.queue).inc()
        if event.kind == "started":
            self._started.add(event.job_id)
            self.running.labels(event.queue).inc()
        elif event.kind in _FINISHED and event.job_id in self._started:
            self._started.discard(event.job_id)
            self.running.labels(event.queue).dec()
            if event.duration is not None:  # only jobs that ran have a duration
                self.duration.labels(event.task).observe(event.duration)

    async def on_queue_stats(self, queue: str, ready: int, unacked: int) -> None:
        self.ready.labels(queue).set(ready)
        self.unacked.labels(queue).set(unacked)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a background thread."""
        self._server, _ = self._prom.start_http_server(port, addr=host, registry=self.registry)

    async def on_worker_stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
