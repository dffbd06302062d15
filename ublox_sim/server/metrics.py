"""``/metrics`` in Prometheus' text format (prometheus_client), one registry per app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..engine import Engine
    from .forward import Forwarder

_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _EngineCollector(Collector):
    """Read at scrape time: mailbox depths and active actors straight from the engine."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine = self.metrics.engine
        if engine is None:
            return
        depths = engine.mailbox_depths()
        active = GaugeMetricFamily(
            "ublox_active_actors", "actors running, by kind", labels=["kind"]
        )
        deepest = GaugeMetricFamily(
            "ublox_mailbox_depth_max", "the deepest mailbox, by actor kind", labels=["kind"]
        )
        queued = GaugeMetricFamily(
            "ublox_mailbox_depth_total",
            "messages waiting in mailboxes, by actor kind",
            labels=["kind"],
        )
        for kind, values in depths.items():
            active.add_metric([kind], len(values))
            deepest.add_metric([kind], max(values, default=0))
            queued.add_metric([kind], sum(values))
        yield active
        yield deepest
        yield queued
        yield CounterMetricFamily(
            "ublox_events_dropped",
            "events dropped for subscribers (WebSocket clients among them) that fell behind",
            value=engine.events_dropped,
        )
        yield GaugeMetricFamily(
            "ublox_acked_units",
            "units of work committed and acknowledged since the store opened",
            value=engine.store.units_committed,
        )
        forwarder = self.metrics.forwarder
        if forwarder is not None:  # several servers on one database
            yield from _forwarding(forwarder)


def _forwarding(forwarder: Forwarder) -> Iterator[CounterMetricFamily]:
    from .forward import FAILURES

    answered = CounterMetricFamily(
        "ublox_forwarded_requests",
        "plays another server steps the world of, forwarded there, by its answer's status",
        labels=["status"],
    )
    for status, count in sorted(forwarder.forwarded.items()):
        answered.add_metric([str(status)], count)
    yield answered
    failed = CounterMetricFamily(
        "ublox_forward_failures",
        "plays refused with 503 world_leased because they could not be forwarded, by reason",
        labels=["reason"],
    )
    for reason in FAILURES:  # every reason, 0 included: a rate needs the series
        failed.add_metric([reason], forwarder.failed[reason])
    yield failed


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.engine: Engine | None = None
        self.forwarder: Forwarder | None = None
        self.http_latency = Histogram(
            "ublox_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=self.registry,
        )
        self.commit_latency = Histogram(
            "ublox_commit_duration_seconds",
            "time for one group commit (a batch of units) in the writer",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(self))

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        engine.store.on_batch_committed(lambda seconds, units: self.commit_latency.observe(seconds))
