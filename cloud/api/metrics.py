"""Prometheus metrics of one API process, in a registry of its own (no global default registry:
two apps in one test process must not share counters)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud.api.limits import LATENCY_BUCKETS_S
from cloud.api.stripe_events import HANDLED_TYPES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger("cloud.api.metrics")


def event_type_label(event_type: str) -> str:
    """Bounded label values: the types we handle by name, everything else as "other"."""
    return event_type if event_type in HANDLED_TYPES else "other"


class LedgerTotalsCollector(Collector):
    """Ledger totals read at scrape time; `festival_ledger_up` says whether the read worked."""

    def __init__(self, read_totals: Callable[[], Mapping[str, tuple[str, float]]]) -> None:
        self._read_totals = read_totals

    def collect(self) -> Iterator[Metric]:
        try:
            totals = self._read_totals()
        except Exception as error:  # a scrape must never fail because the database is away
            log.warning("ledger totals unavailable", extra={"context": {"reason": str(error)}})
            totals = None
        up = GaugeMetricFamily("festival_ledger_up", "1 when the ledger totals could be read")
        up.add_metric([], 0.0 if totals is None else 1.0)
        yield up
        for name, (documentation, value) in (totals or {}).items():
            family = GaugeMetricFamily(f"festival_ledger_{name}", documentation)
            family.add_metric([], float(value))
            yield family


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "festival_api_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "festival_api_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.webhook_events = Counter(
            "festival_api_webhook_events",
            "Stripe webhook events, by type and outcome "
            "(processed, duplicate, ignored, anomaly, invalid, unavailable)",
            ["type", "outcome"],
            registry=registry,
        )
        self.webhook_seconds = Histogram(
            "festival_api_webhook_processing_seconds",
            "Time to verify, record and apply one signed Stripe event",
            ["type"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.ledger_seconds = Histogram(
            "festival_api_ledger_call_seconds",
            "Time of one ledger call made by the API, by operation",
            ["operation"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.pos_requests = Counter(
            "festival_api_pos_requests",
            "Seed-compatible point-of-sale requests, by endpoint and outcome "
            "(approved or the error code)",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.checkout_sessions = Counter(
            "festival_api_checkout_sessions",
            "Online top-up checkout attempts, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "festival_api_rate_limited",
            "Requests refused by the per-client rate limit",
            ["route"],
            registry=registry,
        )

    def add_ledger_totals(self, read_totals: Callable[[], Mapping[str, tuple[str, float]]]) -> None:
        self.registry.register(LedgerTotalsCollector(read_totals))

    def render(self) -> bytes:
        return generate_latest(self.registry)
