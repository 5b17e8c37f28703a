"""Read-only SQL for the dashboard and the ledger-total metrics (the one place the API reads
tables itself; every write goes through cloud.ledger).

Queries are bounded: a time window of at most DASHBOARD_MINUTES_MAX minutes, at most
DASHBOARD_ROWS_MAX rows, and a statement timeout so a slow database cannot pile up scrapes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cloud.api.limits import (
    DASHBOARD_MINUTES_MAX,
    DASHBOARD_ROWS_MAX,
    RETURN_ALERT_FACTOR,
    RETURN_ALERT_WINDOW_S,
)
from cloud.database import Engine, text, translate_errors
from protocol.limits import RETURN_CENTS_MAX_DEFAULT

STATEMENT_TIMEOUT_MS = 2000

log = logging.getLogger("cloud.api.queries")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# A kiosk whose last presence message says offline since longer than this counts as offline
# in festival_ledger_kiosks_offline (deploy/festival-alerts.yml alerts on it).
KIOSK_OFFLINE_ALERT_S = 300
# The invariant check (the check timer's work) is run for /metrics at most this often.
LEDGER_CHECK_INTERVAL_S = 900.0


class DashboardQueries:
    def __init__(
        self,
        engine: Engine,
        *,
        return_cents_max: int = RETURN_CENTS_MAX_DEFAULT,
        check: Callable[[], list[str]] | None = None,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        # Returns beyond a bar's own deposits above this, within the window, raise an alert.
        self.return_alert_cents = RETURN_ALERT_FACTOR * return_cents_max
        self._check = check
        self._clock_s = clock_s
        self._checked: tuple[float, int] | None = None  # (when, violations)

    def _check_violations(self) -> int | None:
        """Violations of the last invariant check, run again after LEDGER_CHECK_INTERVAL_S; None
        when there is no check or it could not run (said in the log, never a failed scrape)."""
        if self._check is None:
            return None
        now_s = self._clock_s()
        if self._checked is None or not 0 <= now_s - self._checked[0] < LEDGER_CHECK_INTERVAL_S:
            try:
                self._checked = (now_s, len(self._check()))
            except Exception as error:
                log.warning("ledger check unavailable", extra={"context": {"reason": str(error)}})
                return None
        return self._checked[1]

    def _rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with translate_errors(), self._engine.connect() as connection:
            connection.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            result = connection.execute(text(sql), params)
            rows = [dict(row._mapping) for row in result]
            connection.rollback()
            return rows

    def ping(self) -> None:
        """Raise (TransientDatabaseError) unless the database answers."""
        self._rows("SELECT 1 AS ok")

    def sales_per_minute(self, minutes: int, now: datetime) -> list[dict[str, Any]]:
        """Approved bar orders per minute, oldest first, every minute present (zeros filled)."""
        assert 1 <= minutes <= DASHBOARD_MINUTES_MAX
        end = now.astimezone(UTC).replace(second=0, microsecond=0)
        start = end - timedelta(minutes=minutes - 1)
        rows = self._rows(
            """
            SELECT date_trunc('minute', created_at) AS minute,
                   count(*) AS orders,
                   coalesce(sum(total_cents), 0) AS amount_cents
            FROM bar_orders
            WHERE created_at >= :start
            GROUP BY 1
            """,
            start=start,
        )
        by_minute = {row["minute"].astimezone(UTC): row for row in rows}
        points = []
        for index in range(minutes):
            minute = start + timedelta(minutes=index)
            row = by_minute.get(minute)
            points.append(
                {
                    "minute": _iso(minute),
                    "orders": int(row["orders"]) if row else 0,
                    "amount_cents": int(row["amount_cents"]) if row else 0,
                }
            )
        return points

    def topups(self, minutes: int, now: datetime) -> dict[str, Any]:
        """Top-ups (cash, card at checkpoints; Stripe online) in the window, and the latest ones."""
        assert 1 <= minutes <= DASHBOARD_MINUTES_MAX
        start = now - timedelta(minutes=minutes)
        totals = self._rows(
            """
            SELECT payment_method, count(*) AS count, coalesce(sum(amount_cents), 0) AS cents
            FROM recharges WHERE created_at >= :start GROUP BY payment_method
            """,
            start=start,
        )
        recent = self._rows(
            """
            SELECT created_at, card_id, payment_method, amount_cents,
                   coalesce(checkpoint_id, kiosk_id, 'online') AS place
            FROM recharges ORDER BY created_at DESC LIMIT :limit
            """,
            limit=DASHBOARD_ROWS_MAX,
        )
        by_method = {row["payment_method"]: int(row["cents"]) for row in totals}
        return {
            "count": sum(int(row["count"]) for row in totals),
            "amount_cents": sum(by_method.values()),
            "by_method": by_method,
            "recent": [
                {
                    "at": _iso(row["created_at"]),
                    "card_uid": row["card_id"],
                    "payment_method": row["payment_method"],
                    "where": row["place"],
                    "amount_cents": int(row["amount_cents"]),
                }
                for row in recent
            ],
        }

    def recent_declines(self) -> list[dict[str, Any]]:
        rows = self._rows(
            """
            SELECT "timestamp", kiosk_id, card_id, status, error_code, amount_cents,
                   edge_function_name
            FROM app_transaction_log
            WHERE status IN ('declined', 'rejected')
            ORDER BY id DESC LIMIT :limit
            """,
            limit=DASHBOARD_ROWS_MAX,
        )
        return [
            {
                "at": _iso(row["timestamp"]),
                "kiosk_id": row["kiosk_id"],
                "source": row["edge_function_name"],
                "card_uid": row["card_id"],
                "status": row["status"],
                "error_code": row["error_code"],
                "amount_cents": row["amount_cents"],
            }
            for row in rows
        ]

    def return_alerts(self) -> list[dict[str, Any]]:
        """Bars whose cup returns of the last hour exceed their own deposits of that hour by more
        than RETURN_ALERT_FACTOR x FESTIVAL_RETURN_MAX_CENTS (DESIGN.md 1.1), worst first.

        Returns at one bar of cups deposited at another are normal in small amounts; a bar that
        pays out far more than it takes in is either the exit bar of the festival or a kiosk
        inventing returns below the per-order limit: a person should look. Reads only the
        window's deposit and return lines (bar_orders by created_at, then the items by key).
        """
        rows = self._rows(
            """
            SELECT kiosk_id, deposits_cents, returns_cents
              FROM (SELECT o.kiosk_id,
                           coalesce(sum(i.line_total_cents)
                                    FILTER (WHERE i.is_deposit AND NOT i.is_return), 0)
                               AS deposits_cents,
                           coalesce(-sum(i.line_total_cents) FILTER (WHERE i.is_return), 0)
                               AS returns_cents
                      FROM bar_orders o
                      JOIN bar_order_items i ON i.order_id = o.order_id
                     WHERE o.created_at > now() - make_interval(secs => :window_s)
                       AND (i.is_deposit OR i.is_return)
                     GROUP BY o.kiosk_id) per_bar
             WHERE returns_cents - deposits_cents > :threshold_cents
             ORDER BY returns_cents - deposits_cents DESC, kiosk_id
             LIMIT :limit
            """,
            window_s=RETURN_ALERT_WINDOW_S,
            threshold_cents=self.return_alert_cents,
            limit=DASHBOARD_ROWS_MAX,
        )
        return [
            {
                "kiosk_id": row["kiosk_id"],
                "deposits_cents": int(row["deposits_cents"]),
                "returns_cents": int(row["returns_cents"]),
                "excess_cents": int(row["returns_cents"]) - int(row["deposits_cents"]),
                "threshold_cents": self.return_alert_cents,
                "window_s": RETURN_ALERT_WINDOW_S,
            }
            for row in rows
        ]

    # --- kiosk configs (revision 0010): what each kiosk runs, what was issued to it -----------

    def kiosk_configs(self) -> dict[str, dict[str, Any]]:
        """Per registered kiosk: the config version it runs (as its latest request cited it),
        the latest version issued to it and whether the broker acknowledged that one, and the
        menu id and offline policy assigned (what that latest version carries)."""
        rows = self._rows(
            """
            SELECT k.kiosk_id, k.config_version, k.config_version_at,
                   k.menu ->> 'menu_id' AS menu_id, k.offline_policy,
                   latest.version AS latest_config_version,
                   latest.published_at AS latest_config_published_at
              FROM kiosks k
              LEFT JOIN LATERAL (
                   SELECT version, published_at FROM kiosk_configs c
                    WHERE c.kiosk_id = k.kiosk_id ORDER BY version DESC LIMIT 1) latest ON true
            """
        )
        return {
            str(row["kiosk_id"]): {
                "config_version": row["config_version"],
                "config_version_at": _iso(row["config_version_at"]),
                "latest_config_version": row["latest_config_version"],
                "latest_config_published": row["latest_config_published_at"] is not None,
                "latest_config_published_at": _iso(row["latest_config_published_at"]),
                "menu_id": row["menu_id"],
                "offline_policy": row["offline_policy"],
            }
            for row in rows
        }

    def checkout_outcome(self, session_id: str) -> dict[str, Any] | None:
        """(issue 16 §1) What became of the top-up of this Checkout Session, for the success
        page Stripe sends the payer to: its status, what was credited and the card's balance
        now (the session id is the payer's: Stripe puts it in the redirect). None: unknown."""
        rows = self._rows(
            "SELECT t.status, t.amount_cents, t.credited_cents, t.currency, c.balance_cents"
            "  FROM topups t LEFT JOIN cards c ON c.card_uid = t.card_uid"
            " WHERE t.session_id = :session_id",
            session_id=session_id,
        )
        return rows[0] if rows else None

    def kiosk_ids(self) -> list[str]:
        """Every registered kiosk (disabled ones too), sorted: whether the one-kiosk menu routes
        (GET and DELETE) name one; PUT's targets are cloud.menu_admin.named_kiosks'."""
        rows = self._rows("SELECT kiosk_id FROM kiosks ORDER BY kiosk_id")
        return [str(row["kiosk_id"]) for row in rows]

    def ledger_totals(self) -> dict[str, tuple[str, float]]:
        """Cheap totals for Prometheus (a few aggregates over small tables)."""
        return_alerts = self.return_alerts()
        cards = self._rows(
            """
            SELECT count(*) AS cards,
                   count(*) FILTER (WHERE status = 'blocked') AS blocked,
                   coalesce(sum(balance_cents), 0) AS balance_cents
            FROM cards
            """
        )[0]
        topups = self._rows(
            """
            SELECT count(*) FILTER (WHERE status = 'credited') AS credited,
                   coalesce(sum(credited_cents), 0) AS credited_cents,
                   coalesce(sum(refunded_cents), 0) AS refunded_cents,
                   coalesce(sum(shortfall_cents), 0) AS shortfall_cents
            FROM topups
            """
        )[0]
        kiosks = self._rows(
            """
            SELECT count(*) FILTER (WHERE enabled) AS enabled,
                   count(*) FILTER (
                       WHERE enabled AND state = 'offline'
                         AND state_at < now() - make_interval(secs => :offline_s)
                   ) AS offline
            FROM kiosks
            """,
            offline_s=KIOSK_OFFLINE_ALERT_S,
        )[0]
        totals = {
            "kiosks_enabled": ("Kiosks enabled in the ledger", float(kiosks["enabled"])),
            "kiosks_offline": (
                f"Enabled kiosks whose last presence message said offline more than "
                f"{KIOSK_OFFLINE_ALERT_S} s ago (alert when > 0)",
                float(kiosks["offline"]),
            ),
            "bars_returns_alert": (
                "Bars whose cup returns of the last hour exceed their own deposits by more than "
                f"{RETURN_ALERT_FACTOR} x FESTIVAL_RETURN_MAX_CENTS (alert when > 0)",
                float(len(return_alerts)),
            ),
            "cards": ("Cards known to the ledger", float(cards["cards"])),
            "cards_blocked": ("Cards currently blocked", float(cards["blocked"])),
            "card_balance_cents": (
                "Sum of all card balances: what the festival owes attendees",
                float(cards["balance_cents"]),
            ),
            "online_topups_credited": (
                "Online top-ups credited to a card",
                float(topups["credited"]),
            ),
            "online_topup_credited_cents": (
                "Cents credited by online top-ups",
                float(topups["credited_cents"]),
            ),
            "online_topup_refunded_cents": (
                "Cents refunded by Stripe on online top-ups",
                float(topups["refunded_cents"]),
            ),
            "online_topup_shortfall_cents": (
                "Refunded cents the card balance could not cover (card blocked)",
                float(topups["shortfall_cents"]),
            ),
        }
        violations = self._check_violations()
        if violations is not None:
            totals["check_violations"] = (
                "Violations found by the ledger invariant check (festival-cloud check), run for "
                f"/metrics at most every {LEDGER_CHECK_INTERVAL_S:g} s (alert when > 0)",
                float(violations),
            )
        offline = self.offline_overview()
        totals.update(
            {
                "offline_kiosks": (
                    "Enabled kiosks whose last presence message says offline (they may be "
                    "selling offline now)",
                    float(offline["kiosks_offline"]["count"]),
                ),
                "offline_exposure_cents": (
                    "Worst-case exposure: the kiosk_max_cents of the offline kiosks summed",
                    float(offline["exposure_cents"]),
                ),
                "offline_sales_today": (
                    "Offline sales applied since 00:00 UTC",
                    float(offline["synced_today"]["count"]),
                ),
                "offline_sales_today_cents": (
                    "Cents of the offline sales applied since 00:00 UTC",
                    float(offline["synced_today"]["amount_cents"]),
                ),
                "offline_shortfall_today_cents": (
                    "Cents of those offline sales the cards could not pay (new debts)",
                    float(offline["synced_today"]["shortfall_cents"]),
                ),
                "debt_cards": ("Cards with an open debt", float(offline["open_debts"]["cards"])),
                "debt_cents": (
                    "Sum of the open debts: what attendees owe the festival",
                    float(offline["open_debts"]["total_cents"]),
                ),
                "offline_kiosks_over_bound": (
                    "Kiosks whose offline sales created more than twice their kiosk_max_cents "
                    "of debts within 24 hours: their offline sales are refused (alert when > 0)",
                    float(len(offline["over_bound"])),
                ),
            }
        )
        return totals

    def payouts_overview(self) -> dict[str, Any]:
        """GET /api/monitoring/payouts (issue 16 §2, the operator's view): the payout parts by
        kind and state with their count and total, the refund queue (Stripe parts still to
        refund), what the festival keeps (donations, fees), and the newest failed parts with
        the reason their failure was recorded with."""
        parts = self._rows(
            """
            SELECT kind, state, count(*) AS count, coalesce(sum(amount_cents), 0) AS amount_cents
              FROM payouts GROUP BY kind, state ORDER BY kind, state
            """
        )
        requests = self._rows("SELECT count(DISTINCT request_id) AS count FROM payouts")[0]
        failures = self._rows(
            """
            SELECT o.payout_id::text AS payout_id, o.request_id::text AS request_id,
                   o.card_uid, o.kind, o.amount_cents, a.reason, a.at AS failed_at
              FROM payouts o
              LEFT JOIN LATERAL (
                   SELECT u.reason, u.at FROM payout_audit u
                    WHERE u.payout_id = o.payout_id AND u.to_state = 'failed'
                    ORDER BY u.audit_id DESC LIMIT 1) a ON true
             WHERE o.state = 'failed'
             ORDER BY a.at DESC NULLS LAST, o.payout_id
             LIMIT :rows
            """,
            rows=DASHBOARD_ROWS_MAX,
        )

        def total(rows: list[dict[str, Any]]) -> dict[str, int]:
            return {
                "count": sum(int(row["count"]) for row in rows),
                "amount_cents": sum(int(row["amount_cents"]) for row in rows),
            }

        by_state = {
            state: total([row for row in parts if row["state"] == state])
            for state in ("pending", "exported", "paid", "failed")
        }
        return {
            "requests": int(requests["count"]),
            "by_state": by_state,
            "by_kind_and_state": [
                {
                    "kind": str(row["kind"]),
                    "state": str(row["state"]),
                    "count": int(row["count"]),
                    "amount_cents": int(row["amount_cents"]),
                }
                for row in parts
            ],
            "refund_queue": total(
                [row for row in parts if row["kind"] == "stripe" and row["state"] == "pending"]
            ),
            "bank_transfers_to_export": total(
                [row for row in parts if row["kind"] == "bank" and row["state"] == "pending"]
            ),
            "kept": {
                "donation_cents": total([row for row in parts if row["kind"] == "donation"])[
                    "amount_cents"
                ],
                "fee_cents": total([row for row in parts if row["kind"] == "fee"])["amount_cents"],
            },
            "failures": [
                {
                    "payout_id": str(row["payout_id"]),
                    "request_id": str(row["request_id"]),
                    "card_uid": str(row["card_uid"]),
                    "kind": str(row["kind"]),
                    "amount_cents": int(row["amount_cents"]),
                    "reason": row["reason"],
                    "failed_at": _iso(row["failed_at"]),
                }
                for row in failures
            ],
        }

    def offline_overview(self) -> dict[str, Any]:
        """GET /api/monitoring/offline (DESIGN.md): the enabled kiosks offline now with the
        kiosk_max_cents of the newest config published to each (what it can be selling
        under), their sum as the worst-case exposure, the offline sales applied since 00:00
        UTC (count, amount, shortfall), the open debts, and the kiosks past the 24-hour bound
        of revision 0013 (more than 2 x kiosk_max_cents of debts created within 24 hours)."""
        kiosks = self._rows(
            """
            SELECT k.kiosk_id, k.state_at,
                   (c.document -> 'offline' ->> 'kiosk_max_cents')::bigint AS kiosk_max_cents
              FROM kiosks k
              LEFT JOIN LATERAL (
                   SELECT c.document FROM kiosk_configs c
                    WHERE c.kiosk_id = k.kiosk_id AND c.published_at IS NOT NULL
                    ORDER BY c.version DESC LIMIT 1) c ON true
             WHERE k.enabled AND k.state = 'offline'
             ORDER BY k.kiosk_id
             LIMIT :rows
            """,
            rows=DASHBOARD_ROWS_MAX,
        )
        synced = self._rows(
            """
            SELECT count(*) AS count, coalesce(sum(total_cents), 0) AS amount_cents,
                   coalesce(sum(shortfall_cents), 0) AS shortfall_cents
              FROM offline_sales
             WHERE applied_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
            """
        )[0]
        debts = self._rows(
            "SELECT count(*) AS cards, coalesce(sum(debt_cents), 0) AS total_cents"
            " FROM cards WHERE debt_cents > 0"
        )[0]
        over_bound = self._rows(
            """
            SELECT s.kiosk_id, s.created_cents,
                   (c.document -> 'offline' ->> 'kiosk_max_cents')::bigint AS kiosk_max_cents
              FROM (SELECT kiosk_id, sum(shortfall_cents) AS created_cents,
                           max(config_version) AS config_version
                      FROM offline_sales
                     WHERE applied_at > now() - interval '24 hours'
                     GROUP BY kiosk_id) s
              JOIN kiosk_configs c
                ON c.kiosk_id = s.kiosk_id AND c.version = s.config_version
             WHERE s.created_cents > 2 * (c.document -> 'offline' ->> 'kiosk_max_cents')::bigint
             ORDER BY s.kiosk_id
             LIMIT :rows
            """,
            rows=DASHBOARD_ROWS_MAX,
        )
        offline = [
            {
                "kiosk_id": str(row["kiosk_id"]),
                "since": _iso(row["state_at"]),
                "kiosk_max_cents": None
                if row["kiosk_max_cents"] is None
                else int(row["kiosk_max_cents"]),
            }
            for row in kiosks
        ]
        return {
            "kiosks_offline": {"count": len(offline), "kiosks": offline},
            "exposure_cents": sum(row["kiosk_max_cents"] or 0 for row in offline),
            "synced_today": {
                "count": int(synced["count"]),
                "amount_cents": int(synced["amount_cents"]),
                "shortfall_cents": int(synced["shortfall_cents"]),
            },
            "open_debts": {
                "cards": int(debts["cards"]),
                "total_cents": int(debts["total_cents"]),
            },
            "over_bound": [
                {
                    "kiosk_id": str(row["kiosk_id"]),
                    "created_cents": int(row["created_cents"]),
                    "kiosk_max_cents": int(row["kiosk_max_cents"]),
                }
                for row in over_bound
            ],
        }
