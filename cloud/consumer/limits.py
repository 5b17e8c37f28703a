"""Every bound of the consumer process, in one place (STYLE.md: "put a limit on everything").

Units are last in the names. The batch size comes from settings (CONSUMER_BATCH_MAX); the MQTT
windows below are derived from it in `receive_maximum_for()` so the broker never sends more than
the inbox can hold.
"""

from __future__ import annotations

from typing import Final

from protocol.limits import MESSAGE_BYTES_MAX, SESSION_EXPIRY_S_DEFAULT

# --- MQTT session -----------------------------------------------------------------------------
# The consumer's durable session: long enough to ride out a deploy or a host reboot; messages
# for the shared subscription wait in it while the process is away (ENVIRONMENT.md).
SESSION_EXPIRY_S: Final = SESSION_EXPIRY_S_DEFAULT
KEEPALIVE_S: Final = 30
# paho reconnects by itself with exponential backoff between these (whole seconds in paho).
RECONNECT_DELAY_MIN_S: Final = 1
RECONNECT_DELAY_MAX_S: Final = 30
# TCP connect and TLS handshake with the broker (paho's connect_timeout); then paho retries.
CONNECT_TIMEOUT_S: Final = 10.0

# MQTT 5 Receive Maximum: how many unacknowledged QoS 1 messages the broker may push to us.
# It is the real bound on what this process holds in memory; a few batches' worth keeps the
# pipeline full while one batch is in the database.
RECEIVE_MAXIMUM_MIN: Final = 256
RECEIVE_MAXIMUM_MAX: Final = 4096
RECEIVE_MAXIMUM_BATCHES: Final = 4

# MQTT 5 Maximum Packet Size announced in CONNECT: the largest message the protocol allows
# (8192 bytes of payload) with as much again for the topic, properties and headers. Larger
# packets are dropped by the broker (whose own cap, for every client, is 262144 bytes).
PACKET_BYTES_MAX: Final = 2 * MESSAGE_BYTES_MAX

# Results we publish (QoS 1): in flight towards the broker, and queued in paho's memory while
# disconnected. A full queue is not fatal: the request stays unacknowledged, the broker
# redelivers it, and the replayed outcome is published again.
RESULT_INFLIGHT_MAX: Final = 1000
RESULT_QUEUE_MAX: Final = 20_000
# (1.1) PUBACK refusals remembered for the retained publishes waiting on them (see
# mqtt_link._Refusals); a refusal is read at once, so a few suffice.
PUBACK_REFUSALS_KEPT_MAX: Final = 1000

# --- inbox (paho's thread -> the worker) --------------------------------------------------------
# Hard cap on QoS 1 messages waiting. The Receive Maximum above should bound them, but
# Mosquitto 2.0.11 honours it only for the first window (measured: after the first
# acknowledgements it sends up to its own max_inflight_messages), so the cap sits well above any
# sane broker window; reaching it leaves messages unacknowledged and forces a reconnect.
INBOX_MESSAGES_MAX: Final = 20_000
# QoS 0 scan records beyond this many waiting are dropped and counted (a scan never moves money).
INBOX_SCANS_MAX: Final = 2000
# (1.1) While several kiosks have messages waiting, a batch takes at most this many of one kiosk
# (inbox.py "Fairness"): a kiosk draining an offline backlog shares batches with the others'
# orders instead of queueing them behind it; a kiosk alone still fills whole batches.
INBOX_SOURCE_SHARE_MAX: Final = 16
# Connection events waiting for the worker (connected / disconnected); old ones are coalesced.
INBOX_EVENTS_MAX: Final = 64
# The worker wakes at least this often to ping the watchdog and notice a stop request.
WORKER_POLL_INTERVAL_S: Final = 0.5
# Natural batching: the worker takes what is waiting, and when it found only a part of a batch it
# lingers this long for stragglers. Small against the 50 ms p99 target, large enough to let a
# burst that is arriving right now share one database transaction.
BATCH_LINGER_S: Final = 0.0005

# --- caches and lookups -------------------------------------------------------------------------
# Result topics built per kiosk, and kiosk public keys parsed once: bounded by far more kiosks
# than a festival has (the caches are cleared when full).
RESULT_TOPICS_CACHED_MAX: Final = 10_000
PARSED_KEYS_MAX: Final = 10_000
# Prepared batches waiting for the committer thread.
PIPELINE_DEPTH: Final = 1
# While the committer is busy, what arrives for the batch being built is prepared (kiosk read,
# signatures) once this many are waiting, or when the committer is free for it: one kiosk read
# per part instead of one per arrival (measured at 1,000 orders/s offered: p50 10 ms instead of
# 14 ms, bench/bench_consumer.py), at most this many verified while the committer waits.
PREPARE_PART_MIN: Final = 16

# --- database faults ---------------------------------------------------------------------------
DATABASE_RETRY_DELAY_MIN_S: Final = 0.05
DATABASE_RETRY_DELAY_MAX_S: Final = 5.0

# --- shutdown -----------------------------------------------------------------------------------
# SIGTERM: finish what is in hand within this, under systemd's TimeoutStopSec=30.
SHUTDOWN_GRACE_S: Final = 20.0
DISCONNECT_TIMEOUT_S: Final = 5.0
# (1.1) The publishing loop's thread: a flush in hand waits at most one PUBACK timeout per
# message; it is a daemon, so a stuck one never holds the process past this.
PUBLISHING_STOP_TIMEOUT_S: Final = 6.0


def receive_maximum_for(batch_max: int) -> int:
    """The Receive Maximum to announce for a worker taking up to ``batch_max`` per batch."""
    assert batch_max >= 1
    return max(RECEIVE_MAXIMUM_MIN, min(RECEIVE_MAXIMUM_MAX, RECEIVE_MAXIMUM_BATCHES * batch_max))
