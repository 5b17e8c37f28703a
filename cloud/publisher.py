"""(1.1) The one place that sends configs and deny-lists to kiosks (PROTOCOL.md "Config and
deny-list"): signed by the cloud, retained, QoS 1.

Every version is allocated and stored by the ledger *before* anything is sent
(`ConfigLedger.issue_kiosk_config`, `issue_denylist`), so whoever changes a menu, an offline
policy or a card's status only writes to the database; `Publisher.flush()` then publishes what is
stored and not yet acknowledged, and marks each version published only after the broker's PUBACK.
A version number is therefore never reused, across restarts too, and publishing the same version
twice (two consumers, a retry after a lost PUBACK, the CLI racing the consumer) is harmless: the
kiosk applies only a higher version.

Used by the consumer's publishing loop (cloud/consumer/publishing.py: at least every second and at
once on the database's NOTIFY) and by the operator's CLI right after it issued configs (over a
short MQTT session). Faults (broker or database away) leave things unpublished for the next
flush; they are logged, never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cloud.limits import PUBLISH_ACK_TIMEOUT_S, PUBLISH_CONFIGS_PER_FLUSH_MAX
from cloud.ports import ConfigLedger
from protocol.codec import encode_config, encode_denylist
from protocol.errors import ProtocolError
from protocol.keys import Ed25519PrivateKey
from protocol.models import DenyList, parse_config
from protocol.topics import config_topic, denylist_topic

if TYPE_CHECKING:
    from cloud.consumer.metrics import ConsumerMetrics

log = logging.getLogger("cloud.publisher")


class RetainedLink(Protocol):
    """What the publisher needs from MQTT (cloud/consumer/mqtt_link.py: the consumer's link and
    the CLI's short session)."""

    def publish_retained(self, topic: str, payload: bytes, timeout_s: float) -> str | None:
        """Publish retained at QoS 1 and wait for the PUBACK: None when the broker took it,
        else why not."""
        ...


@dataclass(slots=True)
class FlushReport:
    """What one flush did: versions acknowledged by the broker, failures (left for the next
    flush), documents that cannot be encoded (skipped), and whether the database answered."""

    configs_published: list[tuple[str, int]]
    denylist_published: int | None = None
    failures: int = 0
    skipped: int = 0
    pending: int = 0  # configs and deny-lists still unpublished after this flush
    database_error: str | None = None

    @property
    def published(self) -> int:
        return len(self.configs_published) + (self.denylist_published is not None)


class Publisher:
    def __init__(
        self,
        ledger: ConfigLedger,
        link: RetainedLink,
        signing_key: Ed25519PrivateKey,
        prefix: str,
        *,
        transient_errors: tuple[type[BaseException], ...] = (),
        metrics: ConsumerMetrics | None = None,
        ack_timeout_s: float = PUBLISH_ACK_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._link = link
        self._key = signing_key
        self._prefix = prefix
        self._transient = transient_errors
        self._metrics = metrics
        self._ack_timeout_s = ack_timeout_s
        self._clock = clock
        # Versions that cannot be encoded (over CONFIG_BYTES_MAX, or a stored document that no
        # longer parses): logged once as an error and never retried by this process.
        self._unencodable: set[tuple[str, int]] = set()
        # When this process first saw each unpublished version (for the unpublished-age gauge).
        self._pending_since: dict[tuple[str, int], float] = {}
        # Versions whose last publish failed: a broker away for a minute is one warning per
        # version, not one per flush.
        self._failing: set[tuple[str, int]] = set()

    def flush(self) -> FlushReport:
        """Publish every unpublished config (the newest of each kiosk), then recompute the
        deny-list if cards changed and publish its unpublished version. Never raises for a
        broker or database fault: those are in the report and the log."""
        report = FlushReport(configs_published=[])
        try:
            self._flush_configs(report)
            self._flush_denylist(report)
        except self._transient as error:
            report.database_error = str(error)
            log.warning("publisher: database unavailable", extra={"context": {"error": str(error)}})
        self._observe(report)
        return report

    # --- configs ---------------------------------------------------------------------------------

    def _flush_configs(self, report: FlushReport) -> None:
        seen: set[tuple[str, int]] = set()
        for issued in self._ledger.unpublished_configs(PUBLISH_CONFIGS_PER_FLUSH_MAX):
            key = (issued.kiosk_id, issued.version)
            if key in self._unencodable:
                report.skipped += 1
                continue
            seen.add(key)
            try:
                config = parse_config(dict(issued.document))
                payload = encode_config(config, self._key)
            except ProtocolError as error:
                self._skip(report, "config", key, str(error))
                seen.discard(key)
                continue
            topic = config_topic(self._prefix, issued.kiosk_id)
            refused = self._link.publish_retained(topic, payload, self._ack_timeout_s)
            if refused is not None:
                self._failed(report, "config", key, refused)
                continue
            self._ledger.mark_config_published(issued.kiosk_id, issued.version)
            report.configs_published.append(key)
            self._published(
                "config",
                key,
                seen,
                {"kiosk_id": issued.kiosk_id, "version": issued.version, "bytes": len(payload)},
            )
        self._track(("config",), seen)

    # --- the deny-list ---------------------------------------------------------------------------

    def _flush_denylist(self, report: FlushReport) -> None:
        if self._ledger.denylist_stale():
            version = self._ledger.issue_denylist()
            if version is not None:
                log.info("denylist issued", extra={"context": {"version": version}})
        issued = self._ledger.unpublished_denylist()
        seen: set[tuple[str, int]] = set()
        if issued is not None:
            key = ("", issued.version)
            if key in self._unencodable:
                report.skipped += 1
            else:
                seen.add(key)
                try:
                    payload = encode_denylist(
                        DenyList(
                            version=issued.version,
                            issued_at_ms=issued.issued_at_ms,
                            card_uids=tuple(issued.card_uids),
                        ),
                        self._key,
                    )
                except ProtocolError as error:
                    self._skip(report, "denylist", key, str(error))
                    seen.discard(key)
                else:
                    topic = denylist_topic(self._prefix)
                    refused = self._link.publish_retained(topic, payload, self._ack_timeout_s)
                    if refused is not None:
                        self._failed(report, "denylist", key, refused)
                    else:
                        self._ledger.mark_denylist_published(issued.version)
                        report.denylist_published = issued.version
                        self._published(
                            "denylist",
                            key,
                            seen,
                            {
                                "version": issued.version,
                                "cards": len(issued.card_uids),
                                "bytes": len(payload),
                            },
                        )
        self._track(("denylist",), seen)

    # --- bookkeeping -----------------------------------------------------------------------------

    def _skip(self, report: FlushReport, kind: str, key: tuple[str, int], reason: str) -> None:
        """A stored document that cannot be sent: loudly, once; the operator must act (a new
        version supersedes it)."""
        self._unencodable.add(key)
        report.skipped += 1
        if self._metrics is not None:
            self._metrics.cloud_messages_unencodable.labels(kind=kind).inc()
        log.error(
            f"{kind} cannot be published: skipped",
            extra={
                "context": {
                    "kiosk_id": key[0] or None,
                    "version": key[1],
                    "reason": reason,
                    "hint": "issue a smaller menu (menu set) for this kiosk"
                    if kind == "config"
                    else "too many cards for one deny-list",
                }
            },
        )

    def _published(
        self,
        kind: str,
        key: tuple[str, int],
        pending: set[tuple[str, int]],
        context: dict[str, int | str],
    ) -> None:
        """A version the broker took (and the ledger marked published): no longer failing nor
        pending; counted and logged."""
        self._failing.discard(key)
        pending.discard(key)
        if self._metrics is not None:
            self._metrics.cloud_messages_published.labels(kind=kind).inc()
        log.info(f"{kind} published", extra={"context": context})

    def _failed(self, report: FlushReport, kind: str, key: tuple[str, int], reason: str) -> None:
        report.failures += 1
        if self._metrics is not None:
            self._metrics.cloud_message_publish_failures.labels(kind=kind).inc()
        if key in self._failing:
            return
        if len(self._failing) >= PUBLISH_CONFIGS_PER_FLUSH_MAX:
            self._failing.clear()
        self._failing.add(key)
        log.warning(
            f"{kind} not published; retried at every flush",
            extra={"context": {"kiosk_id": key[0] or None, "version": key[1], "reason": reason}},
        )

    def _track(self, kind: tuple[str], still_pending: set[tuple[str, int]]) -> None:
        """Remember since when each version of this kind is waiting (for the age gauge)."""
        is_denylist = kind == ("denylist",)
        now = self._clock()
        for key in list(self._pending_since):
            if (key[0] == "") == is_denylist and key not in still_pending:
                del self._pending_since[key]
        for key in still_pending:
            self._pending_since.setdefault(key, now)

    def _observe(self, report: FlushReport) -> None:
        report.pending = len(self._pending_since)
        if self._metrics is None:
            return
        oldest = min(self._pending_since.values(), default=None)
        age_s = 0.0 if oldest is None else self._clock() - oldest
        self._metrics.cloud_messages_unpublished_age_seconds.set(round(age_s, 3))
