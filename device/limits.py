"""Every limit and default of the kiosk firmware, in one place.

Names follow the project style: ``*_max`` / ``*_min``, units last. ``*_DEFAULT`` values can be
changed by a setting (docs/kiosk.md lists them); the others are fixed here.
"""

from __future__ import annotations

from typing import Final

from protocol.limits import SESSION_EXPIRY_S_DEFAULT

# --- outbox ----------------------------------------------------------------------------------
# Requests waiting for their signed result. When the outbox is full the kiosk refuses new sales
# (visibly) instead of growing without bound while the cloud is unreachable.
OUTBOX_MAX_DEFAULT: Final = 500
OUTBOX_MAX_MIN: Final = 1
OUTBOX_MAX_MAX: Final = 100_000
# Finished requests kept for the screen and for diagnostics (oldest deleted first).
OUTBOX_HISTORY_MAX: Final = 200
# (1.1) How many of its latest approved orders a bar kiosk's page lists for "cancel" (void).
VOID_RECENT_ORDERS_MAX: Final = 20
# (1.1) A staff login holds for 12 hours after its tap (PROTOCOL.md ``staff_login``), then the
# kiosk drops it too; at most this many staff are logged in at one kiosk at once.
STAFF_LOGIN_MAX_S: Final = 12 * 3600
STAFF_SESSIONS_MAX: Final = 20
# device/staff_client.py (scripts and the demo driving a kiosk's page): one HTTP call, and the
# wait for a login's result; how often it looks.
STAFF_CLIENT_HTTP_TIMEOUT_S: Final = 5.0
STAFF_CLIENT_RESULT_TIMEOUT_S: Final = 15.0
STAFF_CLIENT_POLL_S: Final = 0.05
OUTBOX_FILE_NAME: Final = "outbox.sqlite3"
# How long a writer waits for SQLite's lock (only our own process writes; this is a safety net).
OUTBOX_BUSY_TIMEOUT_MS: Final = 5_000

# --- waiting for results and resending ---------------------------------------------------------
# After this long without a result the screen says "no answer yet"; the request stays pending.
RESULT_TIMEOUT_S_DEFAULT: Final = 5.0
RESULT_TIMEOUT_MIN_S: Final = 0.1
RESULT_TIMEOUT_MAX_S: Final = 600.0
# A request the broker acknowledged but the cloud never answered is published again (same bytes)
# after RESEND_AFTER_S_DEFAULT, then after doubling intervals up to RESEND_AFTER_MAX_S.
RESEND_AFTER_S_DEFAULT: Final = 10.0
RESEND_AFTER_MIN_S: Final = 0.05
RESEND_AFTER_MAX_S: Final = 300.0
# (1.1) KIOSK_OFFLINE_AFTER_S: a publish the broker has not acknowledged for this long means the
# kiosk is offline for new sales (it judges them by its offline policy), even while the TCP
# connection still looks up (paho's keepalive notices a dead link only after 1.5 x 30 s).
OFFLINE_AFTER_S_DEFAULT: Final = 3.0
OFFLINE_AFTER_MIN_S: Final = 0.5
OFFLINE_AFTER_MAX_S: Final = 120.0
# (1.1) Requests handed to MQTT and awaiting their result, at most: a kiosk back online with a
# backlog of offline sales resends it in seq order through this window, the next one as each
# result arrives, instead of all at once. All at once, thousands of them stood in the broker's
# one queue to the consumer ahead of every other kiosk's order (online p99 60-700 ms during a
# 2,000-sale drain; windowed: 24-26 ms, and the drain as fast; bench/bench_offline_drain.py).
RESULTS_AWAITED_MAX: Final = 64
# How long approved / declined stay on screen before the kiosk returns to idle.
OUTCOME_DISPLAY_S: Final = 6.0
# Results that arrived for a request no longer on screen, kept for the page's "late results".
LATE_RESULTS_MAX: Final = 10

# --- event loop --------------------------------------------------------------------------------
# Reader, MQTT and HTTP threads only enqueue on this queue; the main loop decides.
EVENT_QUEUE_MAX: Final = 1_000
# The loop wakes at least this often to run timers (timeouts, resends, watchdog).
LOOP_TICK_S: Final = 0.1
# How long an HTTP request waits for the main loop to answer its command.
COMMAND_REPLY_TIMEOUT_S: Final = 5.0
# How often the loop checks that the card reader's thread is alive (and restarts it if not).
READER_CHECK_INTERVAL_S: Final = 1.0

# --- MQTT ------------------------------------------------------------------------------------
SESSION_EXPIRY_S: Final = SESSION_EXPIRY_S_DEFAULT
KEEPALIVE_S: Final = 30
RECONNECT_DELAY_MIN_S: Final = 1
RECONNECT_DELAY_MAX_S: Final = 30
# TCP connect and TLS handshake with the broker (paho's connect_timeout); then paho retries.
CONNECT_TIMEOUT_S: Final = 10.0
# paho's own queue of unsent publishes is unbounded by default; ours never holds more than the
# outbox plus some scan and status messages.
MQTT_INFLIGHT_MAX: Final = 100
MQTT_QUEUED_EXTRA: Final = 100
# Waiting for the final "offline" status to leave on a clean shutdown.
SHUTDOWN_PUBLISH_TIMEOUT_S: Final = 2.0

# --- card reader ------------------------------------------------------------------------------
# SCardGetStatusChange timeout: how quickly the reader thread notices a stop request.
READER_POLL_MS: Final = 500
# Rebuilding the PC/SC context after pcscd went away: first and largest pause.
READER_RETRY_MIN_S: Final = 0.2
READER_RETRY_MAX_S: Final = 5.0
# A read error while the card is still present is retried this often, this far apart.
READ_ATTEMPTS_MAX: Final = 3
READ_RETRY_PAUSE_S: Final = 0.2
# 4, 7 or 10 byte UIDs are what the protocol carries; anything else is an unsupported card.
CARD_UID_BYTES_ALLOWED: Final = frozenset({4, 7, 10})

# --- local HTTP interface ------------------------------------------------------------------------
HTTP_PORT_DEFAULT: Final = 8080
HTTP_BODY_BYTES_MAX: Final = 16 * 1024
STATIC_FILE_BYTES_MAX: Final = 1024 * 1024

# --- menu --------------------------------------------------------------------------------------
MENU_FILE_BYTES_MAX: Final = 256 * 1024
MENU_PRODUCTS_MAX: Final = 100
MENU_DEPOSITS_MAX: Final = 10
MENU_TITLE_LENGTH_MAX: Final = 64
# Hex digits of a menu's content tag (SHA-256): the page sends it back with an order.
MENU_TAG_LENGTH: Final = 16
# Cup returns credited by one bar order (FESTIVAL_RETURN_MAX_CENTS, default the protocol's
# RETURN_CENTS_MAX_DEFAULT, as the cloud's rule): the kiosk refuses more before anything is
# signed; the cloud enforces the real rule (RETURN_LIMIT_EXCEEDED). 0: this kiosk takes no returns.
RETURN_CENTS_MAX_MAX: Final = 10_000_000

# --- indicators (GPIO) --------------------------------------------------------------------------
GREEN_PIN_DEFAULT: Final = 17
RED_PIN_DEFAULT: Final = 27
BUZZER_PIN_DEFAULT: Final = 22
GPIO_PIN_MIN: Final = 2
GPIO_PIN_MAX: Final = 27
# Patterns queued for the indicator thread; a newer pattern replaces older ones.
INDICATOR_QUEUE_MAX: Final = 8
RECORDED_PIN_CHANGES_MAX: Final = 10_000

# --- logs -------------------------------------------------------------------------------------
# A longer traceback keeps its end (where it failed): a deep recursion must not flood the journal.
LOG_TRACEBACK_CHARACTERS_MAX: Final = 32 * 1024

# --- test and demo tools (device/virtual_card.py, device/sandbox.py; never used on a kiosk) -----
VPCD_CONNECT_TIMEOUT_S: Final = 5.0
PCSCD_START_TIMEOUT_S: Final = 15.0
PCSCD_STOP_TIMEOUT_S: Final = 10.0

FIRMWARE_DEFAULT: Final = "festival-kiosk/0.1.0"
