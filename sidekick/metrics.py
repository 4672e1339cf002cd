"""Prometheus metrics: Falcosidekick's names (dashboards keep working) plus the queue's.

Each hub gets its own registry so several hubs can live in one process (tests, benchmarks).
"""

from __future__ import annotations

import collections

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from sidekick.alert import Alert

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "falcosecurity_falcosidekick_falco_events",
            "Alerts accepted, by rule and priority",
            [
                "hostname",
                "rule",
                "priority",
                "priority_raw",
                "source",
                "k8s_ns_name",
                "k8s_pod_name",
            ],
            registry=r,
        )
        self.inputs = Counter(
            "falcosecurity_falcosidekick_inputs",
            "Alerts received, by input and verdict",
            ["source", "status"],
            registry=r,
        )
        self.outputs = Counter(
            "falcosecurity_falcosidekick_outputs",
            "Delivery attempts, by output and result",
            ["destination", "status"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "lanner_queue_depth",
            "Deliveries pending (waiting or retrying)",
            ["destination"],
            registry=r,
        )
        self.queue_oldest = Gauge(
            "lanner_queue_oldest_pending_seconds",
            "Age of the oldest pending delivery",
            ["destination"],
            registry=r,
        )
        self.dead_letters = Gauge(
            "lanner_dead_letters",
            "Deliveries in the dead-letter list",
            ["destination"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "lanner_dead_lettered",
            "Deliveries given up and dead-lettered",
            ["destination"],
            registry=r,
        )
        self.retries = Counter(
            "lanner_delivery_retries",
            "Deliveries scheduled for another attempt",
            ["destination"],
            registry=r,
        )
        self.aggregated = Counter(
            "lanner_aggregated_alerts",
            "Alerts counted into an aggregation window instead of delivered on their own",
            ["destination"],
            registry=r,
        )
        self.latency = Histogram(
            "lanner_delivery_latency_seconds",
            "From acceptance by the hub to delivered",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dedup_hits = Counter(
            "lanner_dedup_hits",
            "Alerts dropped as already accepted (same uuid)",
            registry=r,
        )
        self.subscriber_drops = Gauge(
            "lanner_subscriber_dropped",
            "Alerts dropped for slow live subscribers",
            registry=r,
        )

    def count_events(self, alerts: list[Alert]) -> None:
        # One labels() lookup per distinct label set of the batch, not per alert.
        counts: collections.Counter[tuple[str, ...]] = collections.Counter()
        for alert in alerts:
            fields = alert.output_fields
            counts[(
                alert.hostname or "unknown",
                alert.rule,
                str(int(alert.priority)),
                alert.priority.name.lower(),
                alert.source,
                str(fields.get("k8s.ns.name") or ""),
                str(fields.get("k8s.pod.name") or ""),
            )] += 1
        for labels, n in counts.items():
            self.events.labels(*labels).inc(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
