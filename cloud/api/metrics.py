"""Prometheus metrics of one API process, in a registry of its own (no global default registry:
two apps in one test process must not share counters). Figures that need database queries are
cached (METRICS_CACHE_S), so scrapes cannot load the database."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cloud.api.limits import LATENCY_BUCKETS_S, METRICS_CACHE_S
from cloud.api.stripe_events import HANDLED_TYPES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

log = logging.getLogger("cloud.api.metrics")


def event_type_label(event_type: str) -> str:
    """Bounded label values: the types we handle by name, everything else as "other"."""
    return event_type if event_type in HANDLED_TYPES else "other"


Totals = Mapping[str, tuple[str, float]]


class CachedReading:
    """The result of `read()`, read again at most once per `max_age_s`.

    Concurrent callers of a stale value wait for the one read in flight instead of starting
    their own, so a burst of scrapes costs one query round. A failed read is kept for the same
    time (as None): a database that is away is not hammered either.
    """

    def __init__(
        self,
        read: Callable[[], Totals],
        *,
        max_age_s: float,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        assert max_age_s > 0
        self._read = read
        self._max_age_s = max_age_s
        self._clock_s = clock_s
        self._lock = threading.Lock()
        self._value: Totals | None = None
        self._read_at_s: float | None = None
        self.reads = 0

    def get(self) -> tuple[Totals | None, float]:
        """The value (None when the last read failed) and its age in seconds."""
        with self._lock:
            now_s = self._clock_s()
            if self._read_at_s is None or not 0 <= now_s - self._read_at_s < self._max_age_s:
                self.reads += 1
                try:
                    self._value = self._read()
                except Exception as error:  # a scrape must never fail: the database is away
                    log.warning(
                        "ledger totals unavailable", extra={"context": {"reason": str(error)}}
                    )
                    self._value = None
                self._read_at_s = now_s
            return self._value, max(0.0, now_s - self._read_at_s)


class LedgerTotalsCollector(Collector):
    """Ledger totals (cached, see CachedReading); `festival_ledger_up` says whether the last
    read worked, `festival_ledger_totals_age_seconds` how old the figures are."""

    def __init__(self, reading: CachedReading) -> None:
        self._reading = reading

    def describe(self) -> Iterator[Metric]:
        """The fixed families only: without describe() the registry would call collect() at
        registration, reading the database once before any scrape (and caching it)."""
        yield GaugeMetricFamily("festival_ledger_up", "")
        yield GaugeMetricFamily("festival_ledger_totals_age_seconds", "")
        yield CounterMetricFamily("festival_ledger_totals_reads", "")

    def collect(self) -> Iterator[Metric]:
        totals, age_s = self._reading.get()
        up = GaugeMetricFamily("festival_ledger_up", "1 when the ledger totals could be read")
        up.add_metric([], 0.0 if totals is None else 1.0)
        yield up
        age = GaugeMetricFamily(
            "festival_ledger_totals_age_seconds",
            f"Age of the ledger figures below (read at most every {METRICS_CACHE_S:g} s)",
        )
        age.add_metric([], age_s)
        yield age
        reads = CounterMetricFamily(
            "festival_ledger_totals_reads",
            "Times this process read the ledger totals from the database",
        )
        reads.add_metric([], float(self._reading.reads))
        yield reads
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
        self.payout_refunds = Counter(
            "festival_api_payout_refunds",
            "Stripe refund attempts of payout parts by this process, by result "
            "(paid, retry, failed)",
            ["result"],
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

    def add_ledger_totals(
        self,
        read_totals: Callable[[], Totals],
        *,
        max_age_s: float = METRICS_CACHE_S,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> CachedReading:
        reading = CachedReading(read_totals, max_age_s=max_age_s, clock_s=clock_s)
        self.registry.register(LedgerTotalsCollector(reading))
        return reading

    def render(self) -> bytes:
        return generate_latest(self.registry)
