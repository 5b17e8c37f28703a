"""Reports an operator and an accountant ask for (DESIGN.md, "reports"; issue 13 section 3).

- Sales per product (and price), kiosk, hour, VAT rate (and quarter hour, for the dashboard's
  chart): sales lines only
  (cup deposits and their returns move money through the deposit account; they are not sales),
  net of voids, offline sales included. CSV with a header row, amounts as integer cents and, in
  an extra last column, as a decimal of the deployment's currency (`12.50`, integer arithmetic).
- The Z-report of a day (UTC, issue 17 section 4): per bar the orders and sales (the kiosk
  grouping of the sales report, net of voids), per checkpoint the cash and card top-ups and the
  shift closes (revision 0019) with their variance.
- The staff report (issue 17 section 3): per staff member in a window (default today, UTC), bar
  orders with the voided ones of them and the net, the voids they made, cash and card top-ups,
  cash-outs paid and the kiosks they worked at; the events without a staff id as one row.
- The liability: what the festival owes = card balances + payouts not yet paid + the deposit
  account - debts, with the card balances reconciled against the sum of the cards' postings (the
  invariant `festival-cloud check` verifies).

Read-only SQL through the PostgreSQL adapter (cloud/database.py), one statement per report so
every figure of a report comes from one snapshot. The HTTP routes are cloud/api/reports.py; the
CLI verbs (`festival-cloud report sales|day|liability|staff`) are `report_sales` / `report_day` /
`report_liability` / `report_staff`.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from cloud.database import Engine, TransientDatabaseError, make_engine, text, translate_errors
from cloud.limits import REPORT_MOMENT_LENGTH_MAX, REPORT_ROWS_MAX, REPORT_STATEMENT_TIMEOUT_MS
from cloud.settings import CloudSettings

EXIT_OK = 0
EXIT_NOT_RECONCILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 2

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
# RFC 3339 date-time (ISO 8601 with a mandatory offset): `2026-07-04T21:00:00Z`,
# `2026-07-04T23:00:00.5+02:00`. A moment without an offset is refused: which day it means
# would depend on the server's time zone.
MOMENT_PATTERN = re.compile(
    r"\A\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})\Z"
)


class ReportError(ValueError):
    """A report asked for with a bad parameter (HTTP 400, CLI exit 2)."""


class SalesGroup(StrEnum):
    PRODUCT = "product"
    KIOSK = "kiosk"
    HOUR = "hour"
    # Not in DESIGN.md's list: the dashboard's sales-per-15-minutes chart reads it.
    QUARTER_HOUR = "quarter_hour"
    # (issue 13 section 3) The VAT summary: one row per VAT rate the menus carried (and one for
    # the lines sold without a rate), what an accountant declares.
    VAT = "vat"


# The CSV columns of each grouping: DESIGN.md's first, in its order (`sku,name,quantity,
# amount_cents` / `kiosk_id,orders,amount_cents` / `hour,orders,amount_cents`), then this
# project's extra columns, then the decimal columns: `amount` (and `vat`), amount_cents
# (vat_cents) as a decimal. A product is one row per SKU, name, unit price and VAT rate (the
# extras `unit_price_cents`, `vat_rate_bp`): a price changed during the festival shows both
# prices. vat_cents is the VAT included in the row's gross amount (empty where the menu carried
# no rate).
SALES_COLUMNS: Mapping[SalesGroup, tuple[str, ...]] = {
    SalesGroup.PRODUCT: (
        "sku",
        "name",
        "quantity",
        "amount_cents",
        "unit_price_cents",
        "vat_rate_bp",
        "vat_cents",
    ),
    SalesGroup.KIOSK: ("kiosk_id", "orders", "amount_cents"),
    SalesGroup.HOUR: ("hour", "orders", "amount_cents"),
    SalesGroup.QUARTER_HOUR: ("quarter_hour", "orders", "amount_cents"),
    SalesGroup.VAT: ("vat_rate_bp", "quantity", "amount_cents", "vat_cents"),
}
DECIMAL_COLUMN = "amount"
VAT_DECIMAL_COLUMN = "vat"
# The decimal column of each cents column a grouping has.
DECIMAL_COLUMNS: Mapping[str, str] = {
    DECIMAL_COLUMN: "amount_cents",
    VAT_DECIMAL_COLUMN: "vat_cents",
}
# A VAT rate in basis points: 2000 = 20 %.
VAT_RATE_BP_DENOMINATOR = 10_000


def parse_moment(value: str) -> datetime:
    """An RFC 3339 date-time as an aware UTC datetime; ReportError when it is not one.

    Moments before 1970 or after 9999 clamp to those ends (no sale lies beyond them), so any
    valid date-time is accepted and means what it says.
    """
    if len(value) > REPORT_MOMENT_LENGTH_MAX or not MOMENT_PATTERN.match(value):
        raise ReportError(
            f"not an RFC 3339 date-time with an offset (e.g. 2026-07-04T21:00:00Z): {value[:40]!r}"
        )
    try:
        moment = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError as error:
        raise ReportError(f"not a valid date-time: {value!r} ({error})") from None
    # Aware subtraction never overflows, even for 0001-01-01T00:00:00+23:59.
    since_epoch = moment - EPOCH
    if since_epoch < timedelta(0):
        return EPOCH
    if since_epoch > LATEST - EPOCH:
        return LATEST
    return EPOCH + since_epoch


def iso_utc(moment: datetime) -> str:
    """`2026-07-04T21:00:00Z` (milliseconds only when there are any)."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def vat_included_cents(gross_cents: int, vat_rate_bp: int) -> int:
    """The VAT included in a gross amount at a rate (basis points), in whole cents:
    gross x rate / (10000 + rate), rounded half away from zero (1234 at 2000 bp: 205.67 -> 206),
    in integer arithmetic. Reports round once per row, on the row's gross (a product at one
    price, or one VAT rate), never per order line."""
    assert isinstance(gross_cents, int) and isinstance(vat_rate_bp, int) and vat_rate_bp >= 0
    divisor = VAT_RATE_BP_DENOMINATOR + vat_rate_bp
    magnitude = (2 * abs(gross_cents) * vat_rate_bp + divisor) // (2 * divisor)
    return -magnitude if gross_cents < 0 else magnitude


def decimal_amount(cents: int) -> str:
    """Cents as a decimal of the currency, exactly: 1250 -> "12.50", -5 -> "-0.05"."""
    assert isinstance(cents, int)
    sign = "-" if cents < 0 else ""
    whole, fraction = divmod(abs(cents), 100)
    return f"{sign}{whole}.{fraction:02d}"


@dataclass(frozen=True, slots=True)
class SalesWindow:
    """Sales whose time is at or after `start` and before `end` (either may be open)."""

    start: datetime | None = None
    end: datetime | None = None

    @classmethod
    def parse(cls, start: str | None, end: str | None) -> SalesWindow:
        return cls(
            None if start is None else parse_moment(start),
            None if end is None else parse_moment(end),
        )

    @classmethod
    def day(cls, day_start: datetime) -> SalesWindow:
        """The day (24 hours) starting at `day_start` (parse_day's midnight UTC)."""
        return cls(day_start, day_start + timedelta(days=1))

    @classmethod
    def today(cls, now: datetime | None = None) -> SalesWindow:
        """The UTC day `now` (default: the clock's now) falls in, as `report day` reads a day."""
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        return cls.day(parse_day(moment.date().isoformat()))

    def as_json(self) -> dict[str, str | None]:
        return {
            "from": None if self.start is None else iso_utc(self.start),
            "to": None if self.end is None else iso_utc(self.end),
        }


# --- the SQL -----------------------------------------------------------------------------------

# The time a sale is reported under (DESIGN.md): the sale's `created_at_ms`, the kiosk's clock
# when it made the request (bar_orders.created_at_ms, revision 0016; the server's clock for the
# seed POS endpoint's orders), exactly, to the millisecond. Orders applied before revision 0016
# have none: those fall back to the time the ledger applied them (bar_orders.created_at), the
# same moment for an online sale. An offline sale drained hours later is reported when it was
# made. Every grouping, from/to, the Z-report's bars and the staff report's orders follow it.
SOLD_AT_SQL = "coalesce(to_timestamp(o.created_at_ms / 1000.0), o.created_at)"
# Revision 0026 indexes exactly this expression (BRIN, bar_orders_sold_at_brin): a window
# "from X" reads only the block ranges holding sales from X on. Keep the two to the letter alike
# (tests/ledger/test_r0026_sale_time_index.py checks the planner uses the index).

# Every sales line in the window, then the voids subtracted (revision 0016): `voided_lines`
# selects each line of a voided order (the voids table names the order) with its quantity and
# amount negated, reported at the order's own time, so every report is net of it. Offline sales
# are bar_orders rows like any other (their `offline` mark changes nothing here).
# VAT: each line keeps the rate of the menu line it was sold from (revision 0011; NULL without
# a menu, and for the seed POS endpoint's lines).
NET_SALES_LINES_SQL = f"""
WITH sales_lines AS (
    SELECT o.order_id, o.kiosk_id, {SOLD_AT_SQL} AS sold_at,
           i.sku, i.name, i.unit_price_cents, i.vat_rate_bp, i.quantity::bigint AS quantity,
           i.line_total_cents AS amount_cents
      FROM bar_orders o
      JOIN bar_order_items i ON i.order_id = o.order_id
     WHERE NOT i.is_deposit AND NOT i.is_return {{window}}
), voided_lines AS (
    SELECT order_id, kiosk_id, sold_at, sku, name, unit_price_cents, vat_rate_bp,
           -quantity AS quantity, -amount_cents AS amount_cents
      FROM sales_lines
     WHERE order_id IN (SELECT v.order_id FROM voids v)
), net_lines AS (
    SELECT * FROM sales_lines
    UNION ALL
    SELECT * FROM voided_lines
), net_orders AS (
    -- An order counts when something of it is still sold once voids are subtracted.
    SELECT order_id, kiosk_id, min(sold_at) AS sold_at, sum(amount_cents) AS amount_cents
      FROM net_lines
     GROUP BY order_id, kiosk_id
    HAVING sum(quantity) > 0
)
"""

PRODUCT_KEY = ("sku", "name", "unit_price_cents", "vat_rate_bp")

SALES_SELECT_SQL: Mapping[SalesGroup, str] = {
    SalesGroup.PRODUCT: f"""
        SELECT {", ".join(PRODUCT_KEY)}, sum(quantity) AS quantity,
               sum(amount_cents) AS amount_cents
          FROM net_lines
         GROUP BY {", ".join(PRODUCT_KEY)}
        HAVING sum(quantity) <> 0 OR sum(amount_cents) <> 0
         ORDER BY sku NULLS LAST, name, unit_price_cents, vat_rate_bp NULLS LAST
    """,
    SalesGroup.VAT: """
        SELECT vat_rate_bp, sum(quantity) AS quantity, sum(amount_cents) AS amount_cents
          FROM net_lines
         GROUP BY vat_rate_bp
        HAVING sum(quantity) <> 0 OR sum(amount_cents) <> 0
         ORDER BY vat_rate_bp NULLS LAST
    """,
    SalesGroup.KIOSK: """
        SELECT kiosk_id, count(*) AS orders, sum(amount_cents) AS amount_cents
          FROM net_orders
         GROUP BY kiosk_id
         ORDER BY kiosk_id
    """,
    SalesGroup.HOUR: """
        SELECT date_trunc('hour', sold_at AT TIME ZONE 'UTC') AS hour,
               count(*) AS orders, sum(amount_cents) AS amount_cents
          FROM net_orders
         GROUP BY 1
         ORDER BY 1
    """,
    SalesGroup.QUARTER_HOUR: """
        SELECT date_bin('15 minutes', sold_at AT TIME ZONE 'UTC', timestamp '2000-01-01')
                   AS quarter_hour,
               count(*) AS orders, sum(amount_cents) AS amount_cents
          FROM net_orders
         GROUP BY 1
         ORDER BY 1
    """,
}

# One statement, so every figure comes from one snapshot. Payouts and debts do not exist yet
# (DESIGN.md 1.1 adds them): their columns are 0 until their tables do.
LIABILITY_SQL = """
SELECT (SELECT count(*) FROM cards) AS cards,
       (SELECT coalesce(sum(balance_cents), 0) FROM cards) AS card_balances_cents,
       (SELECT coalesce(sum(p.amount_cents), 0)
          FROM postings p JOIN accounts a ON a.account_id = p.account_id
         WHERE a.kind = 'card') AS card_postings_cents,
       (SELECT coalesce(sum(d.balance_cents), 0)
          FROM deposit_balances d JOIN accounts a ON a.account_id = d.account_id
         WHERE a.name = 'deposit:cups') AS deposits_cents,
       -- (0015) Money that left a card for a payout and has not reached the attendee yet:
       -- Stripe and bank parts pending or exported (a donation and a fee are paid at once; a
       -- failed part is back on its card).
       (SELECT coalesce(sum(o.amount_cents), 0) FROM payouts o
         WHERE o.kind IN ('stripe', 'bank')
           AND o.state IN ('pending', 'exported')) AS payouts_pending_cents,
       -- (0013) What offline sales left cards owing.
       (SELECT coalesce(sum(debt_cents), 0) FROM cards) AS debts_cents,
       now() AS generated_at
"""


# (issue 16 section 2) The money cycle by account kind: the postings of each kind of account,
# summed. Every transaction sums to zero, so what came in (cash, card terminals and Stripe, net of
# refunds: minus their accounts) equals where it is now: on cards, in payouts (the pending account
# holds what left cards for a payout and has not reached a bank yet, and what a payout kept as
# donation or fee, and its refunded Stripe parts), paid out by bank, sold, held as cup deposits,
# less what cards owe and what the festival lost, plus the rest (refund shortfalls, cash
# variances).
MONEY_BY_KIND_SQL = """
SELECT a.kind, coalesce(sum(p.amount_cents), 0) AS cents
  FROM accounts a LEFT JOIN postings p ON p.account_id = a.account_id
 GROUP BY a.kind
"""
MONEY_IN_KINDS: Final = ("cash", "terminal", "stripe")
MONEY_WHERE: Final = (
    ("card", "on_cards_cents"),
    ("payout", "payouts_account_cents"),
    ("bank", "paid_by_bank_cents"),
    ("sales", "sales_cents"),
    ("deposit", "deposits_cents"),
    ("receivable", "owed_by_cards_cents"),
    ("loss", "losses_cents"),
)


# (issue 17 section 4) The Z-report's checkpoints: the day's cash and card top-ups (the recharges
# the checkpoints took; Stripe top-ups belong to no drawer) and the shift closes of the day.
DAY_TOPUPS_SQL = """
SELECT checkpoint_id,
       count(*) FILTER (WHERE payment_method = 'cash') AS cash_topups,
       coalesce(sum(amount_cents) FILTER (WHERE payment_method = 'cash'), 0) AS cash_cents,
       count(*) FILTER (WHERE payment_method = 'card') AS card_topups,
       coalesce(sum(amount_cents) FILTER (WHERE payment_method = 'card'), 0) AS card_cents
  FROM recharges
 WHERE payment_method IN ('cash', 'card') AND created_at >= :day_start AND created_at < :day_end
 GROUP BY checkpoint_id
 ORDER BY checkpoint_id
"""
DAY_CLOSES_SQL = """
SELECT checkpoint_id, shift_no, opened_at, closed_at, expected_cents, counted_cents,
       variance_cents, closed_by
  FROM shift_closes
 WHERE closed_at >= :day_start AND closed_at < :day_end
 ORDER BY checkpoint_id, shift_no
"""
# (revision 0022) the cash paid out at each checkpoint's counter that day (card cash-outs):
# what left its drawer, the Stripe parts of those cash-outs not included
DAY_CASH_OUTS_SQL = """
SELECT checkpoint_id, count(*) FILTER (WHERE cash_cents > 0) AS cash_outs,
       coalesce(sum(cash_cents), 0) AS cash_out_cents
  FROM cash_outs
 WHERE created_at >= :day_start AND created_at < :day_end
 GROUP BY checkpoint_id
 ORDER BY checkpoint_id
"""
DAY_PATTERN = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")


def parse_day(value: str) -> datetime:
    """`YYYY-MM-DD` as the start of that day in UTC; ReportError when it is not a date."""
    if not DAY_PATTERN.match(value):
        raise ReportError(f"not a date YYYY-MM-DD: {value[:40]!r}")
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError as error:
        raise ReportError(f"not a valid date: {value!r} ({error})") from None


def _window_sql(window: SalesWindow) -> tuple[str, dict[str, Any]]:
    """The window on the sale's time (SOLD_AT_SQL, indexed by revision 0026)."""
    conditions, params = [], {}
    if window.start is not None:
        conditions.append(f"AND {SOLD_AT_SQL} >= :window_start")
        params["window_start"] = window.start
    if window.end is not None:
        conditions.append(f"AND {SOLD_AT_SQL} < :window_end")
        params["window_end"] = window.end
    return " ".join(conditions), params


def _sales_row(group: SalesGroup, row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in SALES_COLUMNS[group]:
        if column == "vat_cents":
            rate = row["vat_rate_bp"]
            gross = int(row["amount_cents"])
            out[column] = None if rate is None else vat_included_cents(gross, rate)
            continue
        value = row[column]
        if column in ("hour", "quarter_hour"):
            # date_trunc/date_bin of a UTC wall-clock time: a naive timestamp, in UTC.
            value = iso_utc(value.replace(tzinfo=UTC))
        elif column in ("quantity", "orders", "amount_cents"):
            value = int(value)  # sum() of bigint is numeric: whole cents, exactly
        out[column] = value
    for decimal_column, cents_column in _decimal_columns(group).items():
        cents = out[cents_column]
        out[decimal_column] = None if cents is None else decimal_amount(cents)
    return out


def _decimal_columns(group: SalesGroup) -> dict[str, str]:
    """The decimal columns of a grouping (after its own columns), each with its cents column."""
    return {
        decimal: cents
        for decimal, cents in DECIMAL_COLUMNS.items()
        if cents in SALES_COLUMNS[group]
    }


class Reports:
    """The reports over one engine; `currency` is the deployment's (FESTIVAL_CURRENCY)."""

    def __init__(self, engine: Engine, *, currency: str) -> None:
        self._engine = engine
        self.currency = currency

    def _rows(self, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        with translate_errors(), self._engine.connect() as connection:
            connection.execute(text(f"SET LOCAL statement_timeout = {REPORT_STATEMENT_TIMEOUT_MS}"))
            rows = [dict(row._mapping) for row in connection.execute(text(sql), dict(params))]
            connection.rollback()
            return rows

    def _snapshot_rows(
        self, statements: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> list[list[dict[str, Any]]]:
        """The rows of several statements read from one snapshot (repeatable read, read only)."""
        with translate_errors(), self._engine.connect() as connection:
            connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                connection.execute(text("SET TRANSACTION READ ONLY"))
                connection.execute(
                    text(f"SET LOCAL statement_timeout = {REPORT_STATEMENT_TIMEOUT_MS}")
                )
                return [
                    [dict(row._mapping) for row in connection.execute(text(sql), dict(params))]
                    for sql, params in statements
                ]

    def day(self, day_start: datetime) -> dict[str, Any]:
        """The Z-report of the UTC day starting at `day_start`: `bars` (kiosk_id, orders,
        amount_cents, amount: the kiosk grouping of the sales report, net of voids),
        `checkpoints` (the cash and card top-ups, the cash paid out by card cash-outs and the
        shift closes closed that day, with their variance) and `total`; every figure from one
        snapshot."""
        window = SalesWindow.day(day_start)
        condition, params = _window_sql(window)
        day = {"day_start": window.start, "day_end": window.end}
        sales, topups, closes, cash_outs = self._snapshot_rows(
            (
                (
                    NET_SALES_LINES_SQL.format(window=condition)
                    + SALES_SELECT_SQL[SalesGroup.KIOSK],
                    params,
                ),
                (DAY_TOPUPS_SQL, day),
                (DAY_CLOSES_SQL, day),
                (DAY_CASH_OUTS_SQL, day),
            )
        )
        bars = [_sales_row(SalesGroup.KIOSK, row) for row in sales]
        checkpoints: dict[str, dict[str, Any]] = {}

        def checkpoint(checkpoint_id: str) -> dict[str, Any]:
            return checkpoints.setdefault(
                checkpoint_id,
                {
                    "checkpoint_id": checkpoint_id,
                    "cash_topups": 0,
                    "cash_cents": 0,
                    "card_topups": 0,
                    "card_cents": 0,
                    "cash_outs": 0,
                    "cash_out_cents": 0,
                    "shift_closes": [],
                    "variance_cents": 0,
                },
            )

        for row in topups:
            entry = checkpoint(str(row["checkpoint_id"]))
            for column in ("cash_topups", "cash_cents", "card_topups", "card_cents"):
                entry[column] = int(row[column])
        for row in cash_outs:
            entry = checkpoint(str(row["checkpoint_id"]))
            entry["cash_outs"] = int(row["cash_outs"])
            entry["cash_out_cents"] = int(row["cash_out_cents"])
        for row in closes:
            entry = checkpoint(str(row["checkpoint_id"]))
            entry["shift_closes"].append(
                {
                    "shift_no": int(row["shift_no"]),
                    "opened_at": None if row["opened_at"] is None else iso_utc(row["opened_at"]),
                    "closed_at": iso_utc(row["closed_at"]),
                    "expected_cents": int(row["expected_cents"]),
                    "counted_cents": int(row["counted_cents"]),
                    "variance_cents": int(row["variance_cents"]),
                    "closed_by": row["closed_by"],
                }
            )
            entry["variance_cents"] += int(row["variance_cents"])
        rows = [checkpoints[name] for name in sorted(checkpoints)]
        total = {
            "orders": sum(bar["orders"] for bar in bars),
            "sales_cents": sum(bar["amount_cents"] for bar in bars),
            "cash_cents": sum(entry["cash_cents"] for entry in rows),
            "card_cents": sum(entry["card_cents"] for entry in rows),
            "cash_out_cents": sum(entry["cash_out_cents"] for entry in rows),
            "variance_cents": sum(entry["variance_cents"] for entry in rows),
        }
        return {
            "date": day_start.date().isoformat(),
            "currency": self.currency,
            **window.as_json(),
            "bars": bars,
            "checkpoints": rows,
            "total": total,
        }

    def sales(self, group: SalesGroup, window: SalesWindow) -> list[dict[str, Any]]:
        """The rows of one grouping (SALES_COLUMNS + `amount`), in order; ReportError beyond
        REPORT_ROWS_MAX rows (never a cut-short report)."""
        condition, params = _window_sql(window)
        if window.start is not None and window.end is not None and window.start >= window.end:
            return []  # an empty window: nothing was sold in it
        sql = (
            NET_SALES_LINES_SQL.format(window=condition)
            + SALES_SELECT_SQL[group]
            + " LIMIT :rows_limit"
        )
        rows = self._rows(sql, {**params, "rows_limit": REPORT_ROWS_MAX + 1})
        if len(rows) > REPORT_ROWS_MAX:
            raise ReportError(
                f"the report has more than {REPORT_ROWS_MAX} rows: narrow it with from/to"
            )
        return [_sales_row(group, row) for row in rows]

    def sales_json(self, group: SalesGroup, window: SalesWindow) -> dict[str, Any]:
        rows = self.sales(group, window)
        total: dict[str, Any] = {"amount_cents": sum(row["amount_cents"] for row in rows)}
        for column in ("quantity", "orders"):
            if column in SALES_COLUMNS[group]:
                total[column] = sum(row[column] for row in rows)
        if "vat_cents" in SALES_COLUMNS[group]:
            # the sum of the rows' VAT (each rounded on its row), the rows without a rate as 0
            total["vat_cents"] = sum(row["vat_cents"] or 0 for row in rows)
        for decimal_column, cents_column in _decimal_columns(group).items():
            total[decimal_column] = decimal_amount(total[cents_column])
        return {
            "group": group.value,
            "currency": self.currency,
            **window.as_json(),
            "rows": rows,
            "total": total,
        }

    def sales_csv(self, group: SalesGroup, window: SalesWindow) -> str:
        return sales_csv(group, self.sales(group, window))

    def liability(self) -> dict[str, Any]:
        """What the festival owes (DESIGN.md): card balances + payouts not yet paid + the
        deposit account - debts. `reconciled` says the cards' cached balances equal the sum of
        their postings (else `festival-cloud check` reports the cards that differ)."""
        row = self._rows(LIABILITY_SQL, {})[0]
        figures = {
            name: int(row[name])
            for name in (
                "card_balances_cents",
                "card_postings_cents",
                "payouts_pending_cents",
                "deposits_cents",
                "debts_cents",
            )
        }
        liability_cents = (
            figures["card_balances_cents"]
            + figures["payouts_pending_cents"]
            + figures["deposits_cents"]
            - figures["debts_cents"]
        )
        return {
            "currency": self.currency,
            "generated_at": iso_utc(row["generated_at"]),
            "liability_cents": liability_cents,
            "liability": decimal_amount(liability_cents),
            "cards": int(row["cards"]),
            **figures,
            "reconciled": figures["card_balances_cents"] == figures["card_postings_cents"],
            "money": self.money_cycle(),
        }

    def money_cycle(self) -> dict[str, Any]:
        """Everything that ever came in, and where it is now, from the postings by account
        kind (MONEY_BY_KIND_SQL): ``in_cents`` = the sum of the other figures exactly when the
        postings balance (``balanced``). Owed by cards and losses are negative, as booked."""
        by_kind = {str(row["kind"]): int(row["cents"]) for row in self._rows(MONEY_BY_KIND_SQL, {})}
        money: dict[str, Any] = {"in_cents": -sum(by_kind.pop(k, 0) for k in MONEY_IN_KINDS)}
        for kind, name in MONEY_WHERE:
            money[name] = by_kind.pop(kind, 0)
        money["other_cents"] = sum(by_kind.values())  # refund shortfalls, cash variances, …
        where = sum(value for name, value in money.items() if name != "in_cents")
        money["balanced"] = money["in_cents"] == where
        return money


def _csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """A report's CSV (csv module, \\r\\n): the header row, then each row's cells in the
    columns' order (an empty cell for None)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[column] is None else row[column] for column in columns])
    return buffer.getvalue()


def sales_csv(group: SalesGroup, rows: Sequence[Mapping[str, Any]]) -> str:
    """The CSV of a sales report: the header row, then one line per row (csv module, \\r\\n)."""
    return _csv((*SALES_COLUMNS[group], *_decimal_columns(group)), rows)


# --- `festival-cloud report …` -------------------------------------------------------------------


@contextmanager
def _reports(settings: CloudSettings) -> Iterator[Reports]:
    settings.require("database_url")
    assert settings.database_url is not None
    engine = make_engine(settings.database_url, pool_size=1, application_name="festival-report")
    try:
        yield Reports(engine, currency=settings.festival_currency)
    finally:
        engine.dispose()


_Verb = Callable[[argparse.Namespace, CloudSettings], int]


def _report_verb(command: str) -> Callable[[_Verb], _Verb]:
    """A report verb whose refusals are one line on stderr: a bad argument or too many rows
    (ReportError) names `festival-cloud <command>` and exits EXIT_USAGE, a database that cannot
    be reached exits EXIT_UNAVAILABLE."""

    def wrap(verb: _Verb) -> _Verb:
        @functools.wraps(verb)
        def run(args: argparse.Namespace, settings: CloudSettings) -> int:
            try:
                return verb(args, settings)
            except ReportError as error:
                print(f"festival-cloud {command}: {error}", file=sys.stderr)
                return EXIT_USAGE
            except TransientDatabaseError as error:
                print(f"festival-cloud: database unavailable: {error}", file=sys.stderr)
                return EXIT_UNAVAILABLE

        return run

    return wrap


@_report_verb("report sales")
def report_sales(args: argparse.Namespace, settings: CloudSettings) -> int:
    """`report sales --group product|kiosk|hour|vat [--from T] [--to T]`: the CSV on stdout."""
    window = SalesWindow.parse(args.start, args.end)
    with _reports(settings) as reports:
        sys.stdout.write(reports.sales_csv(SalesGroup(args.group), window))
    return EXIT_OK


@_report_verb("report day")
def report_day(args: argparse.Namespace, settings: CloudSettings) -> int:
    """`report day --date YYYY-MM-DD [--json]`: the Z-report of that day (UTC)."""
    day_start = parse_day(args.date)
    with _reports(settings) as reports:
        report = reports.day(day_start)
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print(
        f"Z-report {report['date']} (UTC, {report['from']} to {report['to']}), {report['currency']}"
    )
    print("bars (orders, sales):")
    for bar in report["bars"]:
        print(f"  {bar['kiosk_id']:<24} {bar['orders']:>8} {bar['amount']:>14}")
    print("checkpoints (cash top-ups, card top-ups, shift variance):")
    for entry in report["checkpoints"]:
        print(
            f"  {entry['checkpoint_id']:<24} {decimal_amount(entry['cash_cents']):>14}"
            f" {decimal_amount(entry['card_cents']):>14}"
            f" {decimal_amount(entry['variance_cents']):>10}"
        )
        if entry["cash_outs"]:
            print(
                f"    cash paid out: {decimal_amount(entry['cash_out_cents'])}"
                f" ({entry['cash_outs']} cash-outs)"
            )
        for close in entry["shift_closes"]:
            print(
                f"    shift {close['shift_no']} closed {close['closed_at']}:"
                f" expected {decimal_amount(close['expected_cents'])},"
                f" counted {decimal_amount(close['counted_cents'])},"
                f" variance {decimal_amount(close['variance_cents'])}"
            )
    total = report["total"]
    print(
        f"total: {total['orders']} orders, sales {decimal_amount(total['sales_cents'])},"
        f" cash {decimal_amount(total['cash_cents'])}, card {decimal_amount(total['card_cents'])},"
        f" variance {decimal_amount(total['variance_cents'])}"
        + (
            f", cash paid out {decimal_amount(total['cash_out_cents'])}"
            if total["cash_out_cents"]
            else ""
        )
    )
    return EXIT_OK


@_report_verb("report liability")
def report_liability(args: argparse.Namespace, settings: CloudSettings) -> int:
    """`report liability [--json]`; exit 1 when the card balances do not reconcile."""
    with _reports(settings) as reports:
        report = reports.liability()
    if args.json:
        print(json.dumps(report))
    else:
        currency = report["currency"]
        print(f"liability {report['liability']} {currency} at {report['generated_at']}")
        for label, name in (
            (f"card balances ({report['cards']} cards)", "card_balances_cents"),
            ("payouts not yet paid", "payouts_pending_cents"),
            ("deposit account (cups not returned)", "deposits_cents"),
            ("debts (subtracted)", "debts_cents"),
        ):
            print(f"  {label:<40} {decimal_amount(report[name]):>14}")
        money = report["money"]
        print("money in and where it is now" + ("" if money["balanced"] else " (NOT BALANCED)"))
        for label, name in (
            ("came in (cash, terminals, Stripe, net)", "in_cents"),
            ("on cards", "on_cards_cents"),
            ("payouts (pending, donations, fees, Stripe)", "payouts_account_cents"),
            ("paid out by bank transfer", "paid_by_bank_cents"),
            ("sales", "sales_cents"),
            ("cup deposits", "deposits_cents"),
            ("owed by cards (offline debts)", "owed_by_cards_cents"),
            ("losses (disputes, offline)", "losses_cents"),
            ("other (refund shortfalls, cash variances)", "other_cents"),
        ):
            print(f"  {label:<44} {decimal_amount(money[name]):>14}")
    if not report["reconciled"]:
        print(
            "festival-cloud report liability: card balances "
            f"{decimal_amount(report['card_balances_cents'])} differ from their postings "
            f"{decimal_amount(report['card_postings_cents'])}: run festival-cloud check",
            file=sys.stderr,
        )
        return EXIT_NOT_RECONCILED
    return EXIT_OK


# --- the shift report (issue 17 section 4): per checkpoint, per shift, per staff member ----------

# The shifts: every close (revision 0019) and, per drawer (a checkpoint kiosk registered, a cash
# or card top-up taken, or a close), the open shift since its last close with the cash expected so
# far (the close's own formula: the last close's cumulative total minus the drawer account's sum).
# A closed shift is in the window when it closed in [from, to); the open one when `to` is absent.
SHIFTS_CTE = """
WITH closed AS (
    SELECT close_id, checkpoint_id, shift_no, opened_at, closed_at, expected_cents,
           counted_cents, variance_cents
      FROM shift_closes
     WHERE (CAST(:checkpoint AS text) IS NULL OR checkpoint_id = :checkpoint)
       AND (CAST(:start AS timestamptz) IS NULL OR closed_at >= :start)
       AND (CAST(:end AS timestamptz) IS NULL OR closed_at < :end)
), drawers AS (
    SELECT checkpoint_id FROM shift_closes
    UNION
    SELECT checkpoint_id FROM recharges
     WHERE payment_method IN ('cash', 'card') AND checkpoint_id IS NOT NULL
    UNION
    SELECT checkpoint_id FROM kiosks
     WHERE role IN ('checkpoint', 'all') AND checkpoint_id IS NOT NULL
), open_shifts AS (
    SELECT NULL::uuid AS close_id, d.checkpoint_id, coalesce(l.shift_no, 0) + 1 AS shift_no,
           l.closed_at AS opened_at, NULL::timestamptz AS closed_at,
           coalesce(l.cash_total_after_cents, 0) - coalesce(
               (SELECT sum(p.amount_cents) FROM postings p
                  JOIN accounts a ON a.account_id = p.account_id
                 WHERE a.name = 'cash:' || d.checkpoint_id), 0) AS expected_cents,
           NULL::bigint AS counted_cents, NULL::bigint AS variance_cents
      FROM drawers d
      LEFT JOIN LATERAL (SELECT s.shift_no, s.closed_at, s.cash_total_after_cents
                           FROM shift_closes s WHERE s.checkpoint_id = d.checkpoint_id
                          ORDER BY s.shift_no DESC LIMIT 1) l ON true
     WHERE CAST(:include_open AS boolean)
       AND (CAST(:checkpoint AS text) IS NULL OR d.checkpoint_id = :checkpoint)
), shifts AS (
    SELECT * FROM closed
    UNION ALL
    SELECT * FROM open_shifts
)
"""
# What a shift's drawer paid out: the positive postings of its account 'cash:<checkpoint>' (cash
# in is negative there) other than its variance bookings, by the time of their transaction.
SHIFT_TOTALS_SQL = (
    SHIFTS_CTE
    + """
SELECT s.*,
       (SELECT coalesce(sum(p.amount_cents), 0) FROM postings p
          JOIN accounts a ON a.account_id = p.account_id
          JOIN transactions t ON t.transaction_id = p.transaction_id
         WHERE a.name = 'cash:' || s.checkpoint_id AND p.amount_cents > 0
           AND t.kind <> 'cash_variance'
           AND (s.opened_at IS NULL OR t.created_at >= s.opened_at)
           AND (s.closed_at IS NULL OR t.created_at < s.closed_at)) AS cash_paid_out_cents
  FROM shifts s
 ORDER BY s.checkpoint_id, s.shift_no
 LIMIT :rows_limit
"""
)
# The top-ups a checkpoint took in a shift (by their time), per staff member.
SHIFT_STAFF_SQL = (
    SHIFTS_CTE
    + """
SELECT s.checkpoint_id, s.shift_no, r.staff_id,
       count(*) FILTER (WHERE r.payment_method = 'cash') AS cash_topups,
       coalesce(sum(r.amount_cents) FILTER (WHERE r.payment_method = 'cash'), 0)
           AS cash_topups_cents,
       count(*) FILTER (WHERE r.payment_method = 'card') AS card_topups,
       coalesce(sum(r.amount_cents) FILTER (WHERE r.payment_method = 'card'), 0)
           AS card_topups_cents
  FROM shifts s
  JOIN recharges r ON r.checkpoint_id = s.checkpoint_id AND r.payment_method IN ('cash', 'card')
                  AND (s.opened_at IS NULL OR r.created_at >= s.opened_at)
                  AND (s.closed_at IS NULL OR r.created_at < s.closed_at)
 GROUP BY s.checkpoint_id, s.shift_no, r.staff_id
 ORDER BY s.checkpoint_id, s.shift_no, r.staff_id NULLS LAST
 LIMIT :rows_limit
"""
)
SHIFT_COLUMNS: Final = (
    "checkpoint_id",
    "shift_no",
    "close_id",
    "opened_at",
    "closed_at",
    "row",
    "staff_id",
    "cash_topups",
    "cash_topups_cents",
    "card_topups",
    "card_topups_cents",
    "cash_paid_out_cents",
    "expected_cents",
    "counted_cents",
    "variance_cents",
)
# The decimal twins of the cents columns, after them (like the sales CSV's `amount`).
SHIFT_DECIMAL_COLUMNS: Final = {
    "cash_topups_amount": "cash_topups_cents",
    "card_topups_amount": "card_topups_cents",
    "cash_paid_out": "cash_paid_out_cents",
    "expected": "expected_cents",
    "counted": "counted_cents",
    "variance": "variance_cents",
}
TOPUP_FIGURES: Final = ("cash_topups", "cash_topups_cents", "card_topups", "card_topups_cents")


def _optional_cents(value: Any) -> int | None:
    return None if value is None else int(value)


def _with_decimals(row: dict[str, Any]) -> dict[str, Any]:
    for decimal_column, cents_column in SHIFT_DECIMAL_COLUMNS.items():
        cents = row[cents_column]
        row[decimal_column] = None if cents is None else decimal_amount(cents)
    return row


def shift_report_rows(
    reports: Reports,
    *,
    checkpoint_id: str | None = None,
    window: SalesWindow = SalesWindow(),
) -> list[dict[str, Any]]:
    """The shift report's rows: per shift (closed in the window, and each open one when the
    window has no end), one `staff` row per staff member who took top-ups in it (their counts
    and cents; the drawer's figures empty: a drawer is counted, not a person) and then its
    `total` row (the sums, the cash paid out, expected, counted and variance; counted and
    variance empty for the open shift, expected so far). ReportError beyond REPORT_ROWS_MAX."""
    params = {
        "checkpoint": checkpoint_id,
        "start": window.start,
        "end": window.end,
        "include_open": window.end is None,
        "rows_limit": REPORT_ROWS_MAX + 1,
    }
    shifts, staff = reports._snapshot_rows(((SHIFT_TOTALS_SQL, params), (SHIFT_STAFF_SQL, params)))
    if len(shifts) + len(staff) > REPORT_ROWS_MAX:
        raise ReportError(
            f"the report has more than {REPORT_ROWS_MAX} rows: narrow it with from/to"
        )
    by_shift: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in staff:
        by_shift.setdefault((str(row["checkpoint_id"]), int(row["shift_no"])), []).append(row)
    rows: list[dict[str, Any]] = []
    for shift in shifts:
        key = (str(shift["checkpoint_id"]), int(shift["shift_no"]))
        head = {
            "checkpoint_id": key[0],
            "shift_no": key[1],
            "close_id": None if shift["close_id"] is None else str(shift["close_id"]),
            "opened_at": None if shift["opened_at"] is None else iso_utc(shift["opened_at"]),
            "closed_at": None if shift["closed_at"] is None else iso_utc(shift["closed_at"]),
        }
        total: dict[str, Any] = dict.fromkeys(TOPUP_FIGURES, 0)
        for member in by_shift.get(key, []):
            figures = {name: int(member[name]) for name in TOPUP_FIGURES}
            for name, value in figures.items():
                total[name] += value
            rows.append(
                _with_decimals(
                    {
                        **head,
                        "row": "staff",
                        "staff_id": member["staff_id"],
                        **figures,
                        "cash_paid_out_cents": None,
                        "expected_cents": None,
                        "counted_cents": None,
                        "variance_cents": None,
                    }
                )
            )
        rows.append(
            _with_decimals(
                {
                    **head,
                    "row": "total",
                    "staff_id": None,
                    **total,
                    "cash_paid_out_cents": int(shift["cash_paid_out_cents"]),
                    "expected_cents": int(shift["expected_cents"]),
                    "counted_cents": _optional_cents(shift["counted_cents"]),
                    "variance_cents": _optional_cents(shift["variance_cents"]),
                }
            )
        )
    return rows


def shift_report_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The shift report's CSV: the header row, then the rows (empty cells for None)."""
    return _csv((*SHIFT_COLUMNS, *SHIFT_DECIMAL_COLUMNS), rows)


@_report_verb("shift report")
def report_shifts(args: argparse.Namespace, settings: CloudSettings) -> int:
    """`shift report [--checkpoint ID] [--from T] [--to T]`: the shift report's CSV on stdout."""
    window = SalesWindow.parse(args.start, args.end)
    with _reports(settings) as reports:
        rows = shift_report_rows(reports, checkpoint_id=args.checkpoint, window=window)
    sys.stdout.write(shift_report_csv(rows))
    return EXIT_OK


# --- the staff report (issue 17 section 3): sales and top-ups per staff member ------------------

# Every event a staff member's id is recorded with (the kiosk sends `staff_id` in every request),
# in the window, as one row of figures each: a bar order (at its time, SOLD_AT_SQL, with its total
# as charged to the card, cup deposits and returns included; voided = a void names it, counted
# under the order's staff member at the order's time, so orders - voided = net in every window), a
# void made (under the staff member who voided, at the void's time), a cash or card top-up (Stripe
# top-ups are nobody's), a cash-out (the cash paid from the drawer; a Stripe part is refunded, not
# handed out). `per_staff` sums them per staff id (NULL: the seed POS endpoints, old data); the
# name of revision 0024's staff_members is one `LEFT JOIN staff_members m USING (staff_id)` on it.
STAFF_SQL = f"""
-- (revision 0024) who is logged in where now
WITH logins_now AS (
    SELECT l.staff_id, l.kiosk_id FROM staff_logins l
     WHERE l.ended_at IS NULL AND l.expires_at > now()
), events AS (
    SELECT o.staff_id, o.kiosk_id,
           1 AS orders, o.total_cents AS orders_cents,
           (v.order_id IS NOT NULL)::int AS voided_orders,
           CASE WHEN v.order_id IS NULL THEN 0 ELSE o.total_cents END AS voided_cents,
           0 AS voids_made, 0::bigint AS voids_made_cents,
           0 AS cash_topups, 0::bigint AS cash_topups_cents,
           0 AS card_topups, 0::bigint AS card_topups_cents,
           0 AS cash_outs, 0::bigint AS cash_out_cents
      FROM bar_orders o
      LEFT JOIN voids v ON v.order_id = o.order_id
     WHERE (CAST(:start AS timestamptz) IS NULL OR {SOLD_AT_SQL} >= :start)
       AND (CAST(:end AS timestamptz) IS NULL OR {SOLD_AT_SQL} < :end)
    UNION ALL
    SELECT v.staff_id, v.kiosk_id, 0, 0, 0, 0, 1, v.amount_cents, 0, 0, 0, 0, 0, 0
      FROM voids v
     WHERE (CAST(:start AS timestamptz) IS NULL OR v.created_at >= :start)
       AND (CAST(:end AS timestamptz) IS NULL OR v.created_at < :end)
    UNION ALL
    SELECT r.staff_id, r.kiosk_id, 0, 0, 0, 0, 0, 0,
           (r.payment_method = 'cash')::int,
           CASE WHEN r.payment_method = 'cash' THEN r.amount_cents ELSE 0 END,
           (r.payment_method = 'card')::int,
           CASE WHEN r.payment_method = 'card' THEN r.amount_cents ELSE 0 END,
           0, 0
      FROM recharges r
     WHERE r.payment_method IN ('cash', 'card')
       AND (CAST(:start AS timestamptz) IS NULL OR r.created_at >= :start)
       AND (CAST(:end AS timestamptz) IS NULL OR r.created_at < :end)
    UNION ALL
    SELECT c.staff_id, c.kiosk_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, c.cash_cents
      FROM cash_outs c
     WHERE (CAST(:start AS timestamptz) IS NULL OR c.created_at >= :start)
       AND (CAST(:end AS timestamptz) IS NULL OR c.created_at < :end)
    UNION ALL
    -- (revision 0024) who is logged in now, when the window reaches now: listed even before
    -- their first sale
    SELECT l.staff_id, NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
      FROM logins_now l
     WHERE CAST(:end AS timestamptz) IS NULL OR :end > now()
), per_staff AS (
    SELECT staff_id,
           sum(orders) AS orders, sum(orders_cents) AS orders_cents,
           sum(voided_orders) AS voided_orders, sum(voided_cents) AS voided_cents,
           sum(voids_made) AS voids_made, sum(voids_made_cents) AS voids_made_cents,
           sum(cash_topups) AS cash_topups, sum(cash_topups_cents) AS cash_topups_cents,
           sum(card_topups) AS card_topups, sum(card_topups_cents) AS card_topups_cents,
           sum(cash_outs) AS cash_outs, sum(cash_out_cents) AS cash_out_cents,
           coalesce(array_agg(DISTINCT kiosk_id ORDER BY kiosk_id)
                        FILTER (WHERE kiosk_id IS NOT NULL), '{{}}') AS kiosks
      FROM events
     GROUP BY staff_id
)
-- (revision 0024) the staff member's name and role, when registered with `staff add`
SELECT s.*, m.name, m.role,
       -- the kiosks they are logged in at now
       coalesce((SELECT array_agg(l.kiosk_id ORDER BY l.kiosk_id) FROM logins_now l
                  WHERE l.staff_id = s.staff_id), '{{}}') AS logged_in_at
  FROM per_staff s
  LEFT JOIN staff_members m ON m.staff_id = s.staff_id
 ORDER BY s.staff_id NULLS LAST
 LIMIT :rows_limit
"""
# A row's figures (counts and cents), in the CSV's and the JSON's order; net = orders - voided.
STAFF_FIGURES: Final = (
    "orders",
    "orders_cents",
    "voided_orders",
    "voided_cents",
    "net_orders",
    "net_cents",
    "voids_made",
    "voids_made_cents",
    "cash_topups",
    "cash_topups_cents",
    "card_topups",
    "card_topups_cents",
    "topups_cents",
    "cash_outs",
    "cash_out_cents",
)
# What the CSV and the dashboard show for the events recorded without a staff id (JSON: null).
NO_STAFF_LABEL: Final = "(none)"
STAFF_COLUMNS: Final = ("staff_id", "name", "role", *STAFF_FIGURES, "kiosks", "logged_in_at")
# The decimal twins of the cents columns, after them (like the shift report's).
STAFF_DECIMAL_COLUMNS: Final = {
    name.removesuffix("_cents") + "_amount": name
    for name in STAFF_FIGURES
    if name.endswith("_cents")
}


def _staff_row(row: Mapping[str, Any]) -> dict[str, Any]:
    figures = {
        name: int(row[name])
        for name in STAFF_FIGURES
        if name not in ("net_orders", "net_cents", "topups_cents")
    }
    figures["net_orders"] = figures["orders"] - figures["voided_orders"]
    figures["net_cents"] = figures["orders_cents"] - figures["voided_cents"]
    figures["topups_cents"] = figures["cash_topups_cents"] + figures["card_topups_cents"]
    out: dict[str, Any] = {"staff_id": row["staff_id"], "name": row["name"], "role": row["role"]}
    out.update((name, figures[name]) for name in STAFF_FIGURES)
    out["kiosks"] = [str(kiosk) for kiosk in row["kiosks"]]
    out["logged_in_at"] = [str(kiosk) for kiosk in row["logged_in_at"]]
    out.update((twin, decimal_amount(out[cents])) for twin, cents in STAFF_DECIMAL_COLUMNS.items())
    return out


def staff_report(reports: Reports, window: SalesWindow) -> dict[str, Any]:
    """Per staff member in the window: bar orders (count and total as charged, the voided ones
    of them, the net), the voids they made, cash and card top-ups, cash-outs paid and the kiosks
    they worked at; one row (staff_id None) for the events without a staff id; `total` sums each
    figure. One statement, so one snapshot. ReportError beyond REPORT_ROWS_MAX rows."""
    if window.start is not None and window.end is not None and window.start >= window.end:
        found: list[dict[str, Any]] = []  # an empty window
    else:
        params = {"start": window.start, "end": window.end, "rows_limit": REPORT_ROWS_MAX + 1}
        found = reports._rows(STAFF_SQL, params)
    if len(found) > REPORT_ROWS_MAX:
        raise ReportError(
            f"the report has more than {REPORT_ROWS_MAX} rows: narrow it with from/to"
        )
    rows = [_staff_row(row) for row in found]
    total: dict[str, Any] = {name: sum(row[name] for row in rows) for name in STAFF_FIGURES}
    total.update(
        (twin, decimal_amount(total[cents])) for twin, cents in STAFF_DECIMAL_COLUMNS.items()
    )
    return {"currency": reports.currency, **window.as_json(), "rows": rows, "total": total}


def staff_report_csv(report: Mapping[str, Any]) -> str:
    """The staff report's CSV: the header row, then a row per staff member (`(none)` for the
    events without a staff id, the kiosks separated by spaces)."""
    return _csv(
        (*STAFF_COLUMNS, *STAFF_DECIMAL_COLUMNS),
        (
            {
                **row,
                "staff_id": NO_STAFF_LABEL if row["staff_id"] is None else row["staff_id"],
                "kiosks": " ".join(row["kiosks"]),
                "logged_in_at": " ".join(row["logged_in_at"]),
            }
            for row in report["rows"]
        ),
    )


def staff_window(
    start: str | None, end: str | None, day: str | None = None, *, now: datetime | None = None
) -> SalesWindow:
    """The staff report's window: `day` (YYYY-MM-DD, UTC), else from/to, else today (UTC)."""
    if day is not None:
        if start is not None or end is not None:
            raise ReportError("give either a date or from/to, not both")
        return SalesWindow.day(parse_day(day))
    if start is None and end is None:
        return SalesWindow.today(now)
    return SalesWindow.parse(start, end)


@_report_verb("report staff")
def report_staff(args: argparse.Namespace, settings: CloudSettings) -> int:
    """`report staff [--date D | --from T --to T] [--json]`: the staff report's CSV (or JSON) on
    stdout; today (UTC) without a window."""
    window = staff_window(args.start, args.end, args.date)
    with _reports(settings) as reports:
        report = staff_report(reports, window)
    if args.json:
        print(json.dumps(report))
    else:
        sys.stdout.write(staff_report_csv(report))
    return EXIT_OK
