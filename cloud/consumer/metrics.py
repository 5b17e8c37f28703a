"""Prometheus metrics of one consumer process, in a registry of its own (no globals)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Seconds from the message's arrival at this process to its acknowledgement.
PROCESSING_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)

log = logging.getLogger("cloud.consumer.metrics")


@dataclass(frozen=True)
class ConsumerMetrics:
    registry: CollectorRegistry
    messages: Counter
    processing_seconds: Histogram
    batch_size: Histogram
    dead_letters: Counter
    database_retries: Counter
    database_available: Gauge
    queue_depth: Gauge
    connected: Gauge
    dropped: Counter
    results_unpublished: Counter
    cloud_messages_published: Counter
    cloud_message_publish_failures: Counter
    cloud_messages_unencodable: Counter
    cloud_messages_unpublished_age_seconds: Gauge
    sun_failures: Counter
    staff_logins: Counter

    @classmethod
    def create(cls) -> ConsumerMetrics:
        registry = CollectorRegistry(auto_describe=True)
        prefix = "festival_consumer"
        return cls(
            registry=registry,
            messages=Counter(
                f"{prefix}_messages",
                "Messages handled, by kind (tx, scan, status), outcome and error code. Outcomes:"
                " approved, declined, rejected, replayed (tx); recorded (scan, status);"
                " dead_letter (not authenticated or not valid).",
                ["kind", "outcome", "code"],
                registry=registry,
            ),
            processing_seconds=Histogram(
                f"{prefix}_processing_seconds",
                "From arrival in the consumer to acknowledgement, per message.",
                ["kind"],
                buckets=PROCESSING_BUCKETS_S,
                registry=registry,
            ),
            batch_size=Histogram(
                f"{prefix}_batch_size",
                "Requests applied per database transaction.",
                buckets=BATCH_SIZE_BUCKETS,
                registry=registry,
            ),
            dead_letters=Counter(
                f"{prefix}_dead_letters",
                "Messages stored as dead letters, by kind and error code.",
                ["kind", "code"],
                registry=registry,
            ),
            database_retries=Counter(
                f"{prefix}_database_retries",
                "Database calls retried after a transient fault.",
                registry=registry,
            ),
            database_available=Gauge(
                f"{prefix}_database_available",
                "1 while the database answers, 0 while the consumer is retrying.",
                registry=registry,
            ),
            queue_depth=Gauge(
                f"{prefix}_queue_depth",
                "Messages received and waiting for the worker.",
                registry=registry,
            ),
            connected=Gauge(
                f"{prefix}_connected",
                "1 while connected to the MQTT broker.",
                registry=registry,
            ),
            dropped=Counter(
                f"{prefix}_dropped",
                "Messages not taken because the inbox was full (QoS 0 scans are lost;"
                " QoS 1 messages are redelivered after a reconnect), by kind.",
                ["kind"],
                registry=registry,
            ),
            results_unpublished=Counter(
                f"{prefix}_results_unpublished",
                "Results paho refused (its queue was full); the request is left"
                " unacknowledged and answered again when the broker redelivers it.",
                registry=registry,
            ),
            cloud_messages_published=Counter(
                f"{prefix}_cloud_messages_published",
                "(1.1) Configs and deny-lists the broker acknowledged, by kind (config, denylist).",
                ["kind"],
                registry=registry,
            ),
            cloud_message_publish_failures=Counter(
                f"{prefix}_cloud_message_publish_failures",
                "(1.1) Config and deny-list publishes not acknowledged (broker away, refused,"
                " timeout); retried at the next flush, by kind.",
                ["kind"],
                registry=registry,
            ),
            cloud_messages_unencodable=Counter(
                f"{prefix}_cloud_messages_unencodable",
                "(1.1) Stored config or deny-list versions that cannot be signed and sent (over"
                " the 196608-byte limit); skipped, by kind.",
                ["kind"],
                registry=registry,
            ),
            cloud_messages_unpublished_age_seconds=Gauge(
                f"{prefix}_cloud_messages_unpublished_age_seconds",
                "(1.1) How long the oldest config or deny-list version this process saw has been"
                " waiting to be published (0: nothing waiting).",
                registry=registry,
            ),
            sun_failures=Counter(
                f"{prefix}_sun_failures",
                "(1.1) sun mode: requests whose SUN message failed, by reason (missing,"
                " malformed, not_ours, wrong_uid, bad_mac, stale_counter). A rising"
                " stale_counter is a cloning alarm.",
                ["reason"],
                registry=registry,
            ),
            staff_logins=Counter(
                f"{prefix}_staff_logins",
                "(1.1) staff_login requests answered, by outcome (approved, refused); replays"
                " not counted. A burst of refused is someone guessing PINs: five per staff"
                " member in 15 minutes lock them.",
                ["outcome"],
                registry=registry,
            ),
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> bool:
        """Expose /metrics on ``host``:``port`` (port 0: not exposed). A port that cannot be
        bound (taken by another consumer on this host, not permitted) is one logged error: the
        consumer goes on processing payments without /metrics. True when serving."""
        if not port:
            return False
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            log.error(
                "metrics port unavailable: running without /metrics",
                extra={
                    "context": {
                        "host": host,
                        "port": port,
                        "error": f"{type(error).__name__}: {error}",
                        "hint": "give each consumer on a host its own CONSUMER_METRICS_PORT"
                        " (festival-consumer@N adds N to it)",
                    }
                },
            )
            return False
        return True
