"""Building ledger requests for tests: real protocol models, real payload hashes."""

from __future__ import annotations

import hashlib
import itertools
import time
from typing import Any

import sqlalchemy

from cloud.ledger_records import LedgerRequest
from protocol.models import BarItem, BarOrder, CheckpointRecharge, dumps_canonical, request_to_dict

CURRENCY = "EUR"
PUBLIC_KEY = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
_numbers = itertools.count(1)


def next_id(prefix: str = "req") -> str:
    return f"{prefix}-{time.time_ns()}-{next(_numbers)}"


def sha256_of(request: BarOrder | CheckpointRecharge) -> str:
    return hashlib.sha256(dumps_canonical(request_to_dict(request))).hexdigest()


def bar_order(
    card_uid: str,
    *lines: tuple[str, int, int] | BarItem,
    request_id: str | None = None,
    kiosk_id: str = "bar-1",
    seq: int = 1,
    source: str = "mqtt",
    trace_id: str | None = None,
    config_version: int | None = None,
    created_at_ms: int | None = None,
) -> LedgerRequest:
    """A bar order of (name, quantity, unit_price_cents) lines (or BarItems), made now unless
    `created_at_ms` says when, citing `config_version` (the config whose menu priced it)."""
    items = tuple(line if isinstance(line, BarItem) else BarItem(*line) for line in lines) or (
        BarItem("Beer", 1, 500),
    )
    request = BarOrder(
        request_id=request_id or next_id("order"),
        kiosk_id=kiosk_id,
        seq=seq,
        created_at_ms=int(time.time() * 1000) if created_at_ms is None else created_at_ms,
        card_uid=card_uid,
        currency=CURRENCY,
        items=items,
        total_cents=sum(item.signed_cents for item in items),
        staff_id="staff-1",
        config_version=config_version,
    )
    return LedgerRequest(request, sha256_of(request), source=source, trace_id=trace_id)


def recharge(
    card_uid: str,
    amount_cents: int,
    *,
    method: str = "cash",
    request_id: str | None = None,
    kiosk_id: str = "checkpoint-1",
    checkpoint_id: str | None = None,
    seq: int = 1,
    source: str = "mqtt",
    config_version: int | None = None,
) -> LedgerRequest:
    request = CheckpointRecharge(
        request_id=request_id or next_id("topup"),
        kiosk_id=kiosk_id,
        seq=seq,
        created_at_ms=int(time.time() * 1000),
        card_uid=card_uid,
        currency=CURRENCY,
        amount_cents=amount_cents,
        payment_method=method,  # type: ignore[arg-type]
        staff_id="staff-1",
        checkpoint_id=checkpoint_id,
        config_version=config_version,
    )
    return LedgerRequest(request, sha256_of(request), source=source)


def same_id_other_payload(item: LedgerRequest) -> LedgerRequest:
    """The same request_id with a different payload (another hash)."""
    return LedgerRequest(
        item.request, hashlib.sha256(item.payload_sha256.encode()).hexdigest(), item.source
    )


def scalar(url: str, sql: str, **params: object) -> Any:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            return connection.execute(sqlalchemy.text(sql), params).scalar()
    finally:
        engine.dispose()


def execute(url: str, sql: str, **params: object) -> list[tuple[Any, ...]]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            result = connection.execute(sqlalchemy.text(sql), params)
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()
