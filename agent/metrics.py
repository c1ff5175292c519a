"""Prometheus metrics of one agent process, in their own registry.

Counters and histograms are updated where things happen; per-SIM and per-device gauges are
produced at scrape time from the app's live state by :class:`StateCollector` (cheaper than
updating 2,000 gauge children on every signal change).  Names follow Prometheus conventions
(``_total`` counters, base units) and are the contract of ``dashboards/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total
        self.agent_info = Gauge(
            "vsim_agent_info", "Agent identity", ["agent_id", "version"], registry=r
        )
        self.start_time = Gauge("vsim_agent_start_time_seconds", "Process start time", registry=r)
        self.parts_received = Counter("vsim_sms_parts_received", "SMS parts committed", registry=r)
        self.partial = Counter(
            "vsim_messages_partial", "Messages delivered with parts missing", registry=r
        )
        self.delivered = Counter(
            "vsim_messages_delivered", "Messages accepted by the hub", registry=r
        )
        self.retries = Counter("vsim_outbox_retries", "Batches retried after a failure", registry=r)
        self.dead_lettered = Counter(
            "vsim_messages_dead_lettered", "Messages rejected by the hub", registry=r
        )
        self.latency = Histogram(
            "vsim_delivery_latency_seconds",
            "Stored to accepted by the hub",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.hub_duration = Histogram(
            "vsim_hub_request_duration_seconds",
            "Hub request latency",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.hub_errors = Counter(
            "vsim_hub_errors", "Failed hub requests", ["endpoint", "class"], registry=r
        )
        self.auth_failure = Gauge(
            "vsim_hub_auth_failure", "1 while the hub rejects our key", registry=r
        )
        self.commands = Counter(
            "vsim_commands", "Commands executed", ["type", "result"], registry=r
        )
        self.device_reconnects = Counter(
            "vsim_device_reconnects", "Device reconnects", ["device"], registry=r
        )
        self.device_hang_steps = Counter(
            "vsim_device_hang_steps", "Hang-ladder steps taken", ["device", "step"], registry=r
        )
        self.device_errors = Counter(
            "vsim_device_errors", "CME/CMS errors", ["device", "kind", "code"], registry=r
        )

    def register_state(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(StateCollector(collect))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()

    def describe(self) -> Iterable[Metric]:
        return []


def store_metrics(writable: bool, errors: dict[str, int], incidents: int) -> list[Metric]:
    """The store's health (agent/store.py ``StoreHealth``, agent/storecheck.py incidents)."""
    ok = gauge("vsim_store_writable", "1 while the store accepts writes", [])
    ok.add_metric([], 1.0 if writable else 0.0)
    failed = counter("vsim_store_write_errors", "Store writes that failed", ["kind"])
    for kind, n in sorted(errors.items()):
        failed.add_metric([kind], float(n))
    damaged = gauge(
        "vsim_store_incidents", "Damaged stores moved aside at start, not yet acknowledged", []
    )
    damaged.add_metric([], float(incidents))
    return [ok, failed, damaged]


def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


__all__ = ["Any", "Metric", "Metrics", "counter", "gauge"]
