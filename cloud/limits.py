"""Limits of the cloud package's own modules (the broker, the fake Stripe), in one place.

The consumer's are in cloud/consumer/limits.py, the API's in cloud/api/limits.py, the wire
protocol's in protocol/limits.py. Names: ``*_max`` / ``*_min``, units last.
"""

from __future__ import annotations

from typing import Final

# --- the MQTT broker (cloud/broker.py: its configuration and its control client) -------------
# PROTOCOL.md 1.1: every packet is capped at 262144 bytes (config and deny-list payloads are at
# most 196608 bytes, below it with room for MQTT headers).
PACKET_BYTES_MAX: Final = 262_144
# A session (and what is queued in it) lives at most this long after its client went away,
# whatever expiry the client asks for. Kiosks ask for 1 day, the consumer for 1 day; 3 days ride
# out a weekend with a broken kiosk without keeping abandoned sessions forever.
SESSION_EXPIRY_MAX: Final = "3d"
# Per client: unacknowledged QoS 1 messages in flight, and messages/bytes queued while it is
# offline or its window is full. The consumer's shared-subscription turn is the big one: 100,000
# requests of at most 8192 bytes would be 800 MB, so the byte bound is what holds.
INFLIGHT_MESSAGES_MAX: Final = 1000
QUEUED_MESSAGES_MAX: Final = 100_000
QUEUED_BYTES_MAX: Final = 128 * 1024 * 1024
# Sessions and retained messages are written to disk this often (and at shutdown).
AUTOSAVE_INTERVAL_S: Final = 30
# The plugin's own default (PW_DEFAULT_ITERATIONS in 2.0.11), used for every password it sets
# through the control topic too. Our passwords are 192-bit random tokens, not guessable words:
# iterations would only slow down the broker's single thread at every CONNECT.
PASSWORD_HASH_ITERATIONS: Final = 101
PASSWORD_SALT_BYTES: Final = 12
PASSWORD_BYTES: Final = 24  # secrets.token_urlsafe(24): 32 characters, 192 bits
CONTROL_TIMEOUT_S: Final = 5.0

# --- the publisher of configs and deny-lists (cloud/publisher.py, 1.1) ---------------------------
# How long one retained publish waits for the broker's PUBACK before it is left for the next flush.
PUBLISH_ACK_TIMEOUT_S: Final = 5.0
# Configs published per flush (the rest wait for the next one, a second later at most).
PUBLISH_CONFIGS_PER_FLUSH_MAX: Final = 500
# The consumer's publishing loop flushes at least this often, and at once on a NOTIFY.
PUBLISH_INTERVAL_S: Final = 1.0
# The CLI's short MQTT session (menu set, offline set, kiosk add): connect and each PUBACK.
PUBLISH_SESSION_TIMEOUT_S: Final = 5.0
# `menu set FILE.json`: a menu of 200 items is a few tens of kilobytes; a config is at most 196608.
MENU_FILE_BYTES_MAX: Final = 196_608

# --- the fake Stripe (cloud/stripe_fake.py: tests, benchmarks, the demo) ------------------------
# Stripe's own rules for Checkout Sessions: 24 h by default, expires_at at least 30 min ahead.
STRIPE_CHECKOUT_SESSION_LIFETIME_S: Final = 24 * 3600
STRIPE_CHECKOUT_SESSION_LIFETIME_MIN_S: Final = 30 * 60
STRIPE_FAKE_REQUEST_BYTES_MAX: Final = 256 * 1024
# How long delivering one event to a webhook may take.
STRIPE_FAKE_DELIVERY_TIMEOUT_S: Final = 10.0

# --- the in-memory ledger (cloud/ledger_fake.py: tests, benchmarks) ----------------------------
# Dead letters and scan records it keeps for a test to look at (the oldest go first).
LEDGER_FAKE_RECORDS_KEPT_MAX: Final = 10_000

# --- the demo (cloud/demo.py) -------------------------------------------------------------------
DEMO_READY_TIMEOUT_S: Final = 60.0
DEMO_HTTP_TIMEOUT_S: Final = 10.0
DEMO_RESULT_TIMEOUT_S: Final = 30.0
# (1.1) the demo waits this long for the payouts' Stripe refunds (DESIGN.md: within 30 s), and
# for its box of virtual wristbands (cloud/demo_wristbands.py) to end once its input is closed
DEMO_REFUND_TIMEOUT_S: Final = 30.0
DEMO_WRISTBAND_BOX_STOP_TIMEOUT_S: Final = 5.0

# --- the local services of tests and the demo (cloud/sandbox.py) --------------------------------
SANDBOX_START_TIMEOUT_S: Final = 30.0
SANDBOX_STOP_TIMEOUT_S: Final = 15.0

# --- POS device tokens (cloud/pos_devices.py) ---------------------------------------------------
POS_TOKEN_LENGTH_MAX: Final = 128

# --- reports (cloud/reports.py: the sales CSV, the liability, the dashboard's sales tables) ----
# A report that would have more rows than this is refused ("narrow from/to"), never cut short:
# an accountant's total must not silently miss rows. A festival week has 168 hours, 672 quarters.
REPORT_ROWS_MAX: Final = 10_000
# Below the engine's 30 s statement timeout: a report over a whole festival's lines stays a
# bounded scan, and the API's pool connection is back well before a client gives up.
REPORT_STATEMENT_TIMEOUT_MS: Final = 20_000
# A `from` / `to` bound as written (RFC 3339, microseconds at most): 32 characters.
REPORT_MOMENT_LENGTH_MAX: Final = 40
# (issue 17 section 4) The largest drawer count POST /api/shifts/close takes, in cents (ten
# million of the currency's units: a typo, not a drawer, beyond it).
SHIFT_COUNTED_CENTS_MAX: Final = 1_000_000_000

# --- logs (cloud/logs.py) ---------------------------------------------------------------------
# A longer traceback keeps its end (where it failed): a deep recursion must not flood the journal.
LOG_TRACEBACK_CHARACTERS_MAX: Final = 32 * 1024

# --- the ledger's stored procedures (cloud/migrations, revision 0009: ledger_limit(name)) -------
# What the procedures cut a text to before storing it, as cloud/ledger.py cuts it first; the SQL
# has its own copy in ledger_limit() (tests/ledger/test_r0009_limits.py keeps the two equal).
LEDGER_REJECTION_MESSAGE_CHARACTERS_MAX: Final = 200  # sp_record_rejection's message
LEDGER_STRIPE_MESSAGE_CHARACTERS_MAX: Final = 300  # a Stripe anomaly's or ignored event's reason
LEDGER_REFUND_ERROR_CHARACTERS_MAX: Final = 500  # an owed refund's last error
# (1.1, revision 0014) How many accepted SUN counters below a wristband's highest the ledger
# keeps for the offline rule ("not accepted before"): an offline sale read more than this many
# taps before the band's latest accepted one is refused as stale (docs/protocol.md).
SUN_COUNTER_WINDOW: Final = 1024

# --- the attendee's portal (cloud/portal.py: PINs and sessions; the API's in cloud/api/limits.py)
# DESIGN.md 1.1: a PIN is 6-12 of [A-Z0-9] (`card import`); `card pin` prints 8 of them.
PIN_LENGTH_MIN: Final = 6
PIN_LENGTH_MAX: Final = 12
PIN_LENGTH_GENERATED: Final = 8
PIN_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# scrypt with N = 2^13, r = 8 (8 MiB of memory per check), p = 1: about 26 ms per check on the
# 2-core test machine when idle, about 150 ms when both cores are busy; DESIGN.md wants <= 100 ms
# (docs/benchmarks.md, bench/bench_portal.py). 2^14 took 70-90 ms idle, too close to the bound.
# The parameters are stored with each hash: raising them later keeps old hashes checkable.
PIN_SCRYPT_N: Final = 2**13
PIN_SCRYPT_R: Final = 8
PIN_SCRYPT_P: Final = 1
PIN_SCRYPT_KEY_BYTES: Final = 32
PIN_SCRYPT_MAXMEM_BYTES: Final = 64 * 1024 * 1024
PIN_SALT_BYTES: Final = 16
# A supplier's file: one line per wristband (a big festival has tens of thousands).
PIN_IMPORT_ROWS_MAX: Final = 200_000
PIN_IMPORT_LINE_CHARACTERS_MAX: Final = 200
# Below this many PINs, starting worker processes to hash them costs more than it saves.
PIN_IMPORT_PARALLEL_MIN: Final = 64
# The session cookie's secret: 32 random bytes, base64url (43 characters).
PORTAL_TOKEN_BYTES: Final = 32

# --- staff PINs (cloud/staff.py; revision 0024) ----------------------------------------------
# scrypt's cost: 2^14 x 8 x 1 takes 16 MiB and about 50 ms per check on a kiosk-class core (a
# login is rare; a stolen hash costs that much per guess of a PIN's 10^6..10^12).
STAFF_PIN_SCRYPT_N: Final = 2**14
STAFF_PIN_SCRYPT_R: Final = 8
STAFF_PIN_SCRYPT_P: Final = 1
STAFF_PIN_SALT_BYTES: Final = 16
STAFF_PIN_HASH_BYTES: Final = 32
# a staff member's name (staff_members_name_check, revision 0024)
STAFF_NAME_LENGTH_MAX: Final = 200
# `staff add` / `staff pin` make a PIN of this many digits (PROTOCOL.md: 4-12)
STAFF_PIN_DIGITS: Final = 6
