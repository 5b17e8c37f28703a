"""Every bound of the HTTP API, in one place (STYLE.md: "put a limit on everything").

Units are last in the names. The money limits (single top-up, card balance) come from settings;
the rest are fixed here. `ApiLimits` groups the ones a test or a deployment may want to change
(create_app(limits=...)); the defaults are what production runs with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# --- request bodies -------------------------------------------------------------------------
# Every JSON body we accept is small: a seed bar order with 50 items is ~5 KiB.
BODY_BYTES_MAX: Final = 64 * 1024
# Stripe events carry whole API objects (a charge with its refunds list); Stripe keeps them far
# below this, and the signature must be checked over the complete raw body.
WEBHOOK_BODY_BYTES_MAX: Final = 512 * 1024
# JSON nesting of the seed bodies: object > items array > item object.
SEED_JSON_DEPTH_MAX: Final = 4
# Stripe events nest deeper (event > data > object > payment_method_details > card > checks).
WEBHOOK_JSON_DEPTH_MAX: Final = 32

# --- request tracing ------------------------------------------------------------------------
REQUEST_ID_HEADER: Final = "x-request-id"
# A caller's X-Request-ID is kept only when it is this well-formed (it goes into log lines and
# the transaction log); anything else is replaced by a generated one.
REQUEST_ID_PATTERN: Final = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")

# --- Stripe ---------------------------------------------------------------------------------
# Stripe's own default tolerance; we apply it to timestamps in the future too (a signature
# dated ahead is as suspicious as an old one, and stripe-python does not refuse it).
WEBHOOK_TOLERANCE_S: Final = 300
STRIPE_SIGNATURE_HEADER_BYTES_MAX: Final = 4096
STRIPE_SIGNATURES_PER_HEADER_MAX: Final = 16
STRIPE_EVENT_ID_PATTERN: Final = re.compile(r"\Aevt_[A-Za-z0-9_]{1,250}\Z")
STRIPE_OBJECT_ID_PATTERN: Final = re.compile(r"\A[a-z]{2,5}_[A-Za-z0-9_]{1,250}\Z")
STRIPE_EVENT_TYPE_PATTERN: Final = re.compile(r"\A[a-z0-9_.]{1,100}\Z")
# metadata.topup_id as we write it ("tu_" + 32 hex); looser values are not passed on.
TOPUP_ID_PATTERN: Final = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")
# Seconds the API waits for Stripe per attempt, and how often the client retries (with the
# same idempotency key, so a retry can never create a second session).
STRIPE_TIMEOUT_S: Final = 10.0
STRIPE_NETWORK_RETRIES_MAX: Final = 2
# Stripe refuses card payments below 0.50 in EUR/USD/GBP; refusing earlier gives a clear error.
CHECKOUT_AMOUNT_CENTS_MIN: Final = 50

# --- authorization ----------------------------------------------------------------------------
AUTHORIZATION_HEADER_LENGTH_MAX: Final = 1024

# --- pages ------------------------------------------------------------------------------------
TOPUP_FORM_FIELD_LENGTH_MAX: Final = 64

# --- admin -------------------------------------------------------------------------------------
CARD_TRANSACTIONS_MAX: Final = 50
DASHBOARD_MINUTES_MAX: Final = 120
DASHBOARD_ROWS_MAX: Final = 20
# The operator's reason for blocking a card.
BLOCK_REASON_LENGTH_MAX: Final = 200
# (1.1) PUT /api/admin/menus: a menu of 200 items with long non-ASCII names is over 64 KiB of
# JSON, and must still fit; the config it becomes is bounded by protocol.limits.CONFIG_BYTES_MAX.
MENU_BODY_BYTES_MAX: Final = 256 * 1024
# Kiosks one request may name in "kiosks" (a role or "all" names every registered one).
MENU_TARGET_KIOSKS_MAX: Final = 1000

# --- metrics ------------------------------------------------------------------------------------
# Figures that need database queries are read at most once per this many seconds (DESIGN.md:
# "cached for at most 10 s", so a burst of scrapes costs one query round).
METRICS_CACHE_S: Final = 10.0
# DESIGN.md 1.1: a bar whose cup returns exceed its own deposits by more than this many times
# FESTIVAL_RETURN_MAX_CENTS within the window raises an alert (a bar kiosk paying out made-up
# returns, each below the per-order limit, shows here long before the deposit account is empty).
RETURN_ALERT_FACTOR: Final = 20
RETURN_ALERT_WINDOW_S: Final = 3600
# (1.1) The cloning alarm: stale SUN counters in the last window against the window before it
# (a rising count); the dashboard also lists the wristbands with the most stale counters.
SUN_ALARM_WINDOW_MINUTES: Final = 15
SUN_FAILURES_SHOWN_MINUTES: Final = 60
SUN_STALE_CARDS_MAX: Final = 10

LATENCY_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


# --- Stripe refunds of payouts (cloud/api/payout_refunds.py) -----------------------------------
# Every API process looks for due pending Stripe parts this often (DESIGN.md: refunded within
# 30 s of the request; one indexed query per process per interval when there is nothing to do).
PAYOUT_REFUND_INTERVAL_S: Final = 5.0
# A lease outlasts one attempt (the client's 10 s timeout, times its 2 retries, plus its pauses):
# another process takes the part over only after a crash.
PAYOUT_REFUND_LEASE_S: Final = 60
# After a transient error: 5 s, 10 s, 20 s, ... at most 10 minutes between attempts.
PAYOUT_REFUND_RETRY_MIN_S: Final = 5
PAYOUT_REFUND_RETRY_MAX_S: Final = 600
PAYOUT_REFUND_BATCH_MAX: Final = 20
# A charge.refunded event's refunds list is read this far (Stripe embeds at most 10 of them).
PAYOUT_REFUNDS_LISTED_MAX: Final = 100
UUID_PATTERN: Final = re.compile(
    r"\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)


@dataclass(frozen=True)
class ApiLimits:
    """The tunable bounds of one app instance."""

    # Public checkout: a token bucket per client (IPv4 address or IPv6 /64) and one for all
    # clients together, both shared by every API process (kept in PostgreSQL). An attendee
    # needs one or two sessions; a burst of 5 and one more every 6 s stops a script from
    # creating sessions in bulk, and the global bucket (10 a second, bursts of 200) bounds
    # what many addresses together cost in Stripe calls and top-up rows.
    checkout_burst: int = 5
    checkout_refill_per_s: float = 1 / 6
    checkout_global_burst: int = 200
    checkout_global_refill_per_s: float = 10.0
    # How long a checkout waits for the rate-limit query before it answers 503.
    rate_limit_timeout_s: float = 0.5
    body_bytes_max: int = BODY_BYTES_MAX
    webhook_body_bytes_max: int = WEBHOOK_BODY_BYTES_MAX
    menu_body_bytes_max: int = MENU_BODY_BYTES_MAX
    webhook_tolerance_s: int = WEBHOOK_TOLERANCE_S
    # The attendee's portal (cloud/api/portal.py). Logins: a bucket per client (shared by every
    # API process) on top of the per-card lockout, so one address cannot walk through many cards;
    # 10 at once and one more every 5 s is plenty for a family sharing a phone.
    portal_login_burst: int = 10
    portal_login_refill_per_s: float = 1 / 5
    portal_login_global_burst: int = 200
    portal_login_global_refill_per_s: float = 20.0
    # DESIGN.md 1.1: 429 after 5 failures for one card within 15 minutes, for 15 minutes.
    portal_lockout_failures_max: int = 5
    portal_lockout_window_s: int = 900
    # A session lasts a festival day; logging in again costs the holder a PIN typed.
    portal_session_ttl_s: int = 12 * 3600
    # The payout refund runner of the lifespan (cloud/api/payout_refunds.py); 0 runs none.
    payout_refund_interval_s: float = PAYOUT_REFUND_INTERVAL_S
    payout_refund_retry_min_s: int = PAYOUT_REFUND_RETRY_MIN_S
    payout_refund_retry_max_s: int = PAYOUT_REFUND_RETRY_MAX_S

    def __post_init__(self) -> None:
        assert self.checkout_burst >= 1
        assert self.checkout_refill_per_s > 0
        assert self.checkout_global_burst >= 1
        assert self.checkout_global_refill_per_s > 0
        assert self.rate_limit_timeout_s > 0
        assert 0 < self.body_bytes_max <= self.webhook_body_bytes_max
        assert self.body_bytes_max <= self.menu_body_bytes_max
        assert self.webhook_tolerance_s >= 1
        assert self.portal_login_burst >= 1 and self.portal_login_refill_per_s > 0
        assert self.portal_login_global_burst >= 1 and self.portal_login_global_refill_per_s > 0
        assert self.portal_lockout_failures_max >= 1 and self.portal_lockout_window_s >= 1
        assert self.portal_session_ttl_s >= 1
        assert self.payout_refund_interval_s >= 0
        assert 0 <= self.payout_refund_retry_min_s <= self.payout_refund_retry_max_s


# --- the server (cloud/api/__init__.py) ---------------------------------------------------------
# Connections and tasks in flight at most; uvicorn answers 503 beyond (the database pool has 10
# connections and the thread pool 40 threads, so more would only queue).
CONCURRENCY_MAX: Final = 200

# --- rate limits (cloud/api/ratelimit.py) -------------------------------------------------------
RATE_LIMIT_CLIENT_KEY_LENGTH_MAX: Final = 64
# Queries in flight at most per limiter; beyond, a request is refused at once (503) rather than
# queued behind a database that does not answer.
RATE_LIMIT_IN_FLIGHT_MAX: Final = 4
RATE_LIMIT_STATEMENT_TIMEOUT_MS: Final = 1000

# --- refunds owed (cloud/api/refunds.py) --------------------------------------------------------
# Backoff after a failed attempt: attempt n waits min(MIN * 2**(n-1), MAX) seconds.
REFUND_RETRY_DELAY_MIN_S: Final = 1
REFUND_RETRY_DELAY_MAX_S: Final = 3600
# Refunds one sweep attempts at most (a webhook's background task stays short).
SWEEP_REFUNDS_MAX: Final = 10

# --- Stripe events (cloud/api/stripe_events.py) -------------------------------------------------
STRIPE_SIGNATURE_TIMESTAMP_DIGITS_MAX: Final = 12
STRIPE_DISPUTE_STATUS_LENGTH_MAX: Final = 32

# --- the attendee's portal (cloud/api/portal.py) ------------------------------------------------
# Transactions the page lists (newest first): a festival-goer's weekend is well below this.
PORTAL_TRANSACTIONS_MAX: Final = 200
# Slow PIN checks (8 MiB of scrypt each) running at once in one API process; more wait their
# turn for at most PORTAL_PIN_CHECK_WAIT_S, then 503: memory stays bounded under a flood.
PORTAL_PIN_CHECKS_IN_FLIGHT_MAX: Final = 4
PORTAL_PIN_CHECK_WAIT_S: Final = 5.0
PORTAL_FIELD_LENGTH_MAX: Final = 64
# The header a state-changing portal request must carry (CSRF: a cross-site form cannot set a
# header, and a cross-site script cannot without a CORS preflight, which this API never grants).
PORTAL_CSRF_HEADER: Final = "x-festival-portal"
PORTAL_BLOCK_REASON: Final = "reported lost by the holder"
# (1.1) POST /api/portal/payout: the account holder's name as a SEPA file carries it (pain.001:
# at most 70 characters), an e-mail address (RFC 5321: 254), a donation (like the fee setting).
ACCOUNT_HOLDER_LENGTH_MAX: Final = 70
EMAIL_LENGTH_MAX: Final = 254
DONATION_CENTS_MAX: Final = 10**11
