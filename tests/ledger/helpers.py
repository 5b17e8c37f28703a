"""Building ledger requests for tests: real protocol models, real payload hashes."""

from __future__ import annotations

import hashlib
import itertools
import time
from typing import Any

import sqlalchemy

from cloud.ledger_records import LedgerRequest
from protocol.models import (
    BarItem,
    BarOrder,
    CardSwap,
    CheckpointRecharge,
    Request,
    Void,
    dumps_canonical,
    request_to_dict,
)

CURRENCY = "EUR"
PUBLIC_KEY = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
_numbers = itertools.count(1)


def next_id(prefix: str = "req") -> str:
    return f"{prefix}-{time.time_ns()}-{next(_numbers)}"


def sha256_of(request: Request) -> str:
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
    offline: bool = False,
    staff_id: str | None = "staff-1",
) -> LedgerRequest:
    """A bar order of (name, quantity, unit_price_cents) lines (or BarItems), made now unless
    `created_at_ms` says when, citing `config_version` (the config whose menu priced it);
    `offline`: an offline sale (PROTOCOL.md 1.1); `staff_id` None: sent without one."""
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
        staff_id=staff_id,
        config_version=config_version,
        offline=offline,
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
    staff_id: str = "staff-1",
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
        staff_id=staff_id,
        checkpoint_id=checkpoint_id,
        config_version=config_version,
    )
    return LedgerRequest(request, sha256_of(request), source=source)


def card_swap(
    old_card_uid: str,
    new_card_uid: str,
    *,
    request_id: str | None = None,
    kiosk_id: str = "checkpoint-1",
    seq: int = 1,
    sun_counter: int | None = None,
    sun_failure: str | None = None,
    old_sun_counter: int | None = None,
    old_sun_failure: str | None = None,
) -> LedgerRequest:
    """(1.1) A card swap at a checkpoint: ``old_card_uid``'s money onto ``new_card_uid``; the
    SUN verdicts as the consumer gives them in sun mode (all None: uid mode)."""
    request = CardSwap(
        request_id=request_id or next_id("swap"),
        kiosk_id=kiosk_id,
        seq=seq,
        created_at_ms=int(time.time() * 1000),
        card_uid=new_card_uid,
        currency=CURRENCY,
        old_card_uid=old_card_uid,
        staff_id="staff-1",
    )
    return LedgerRequest(
        request,
        sha256_of(request),
        sun_counter=sun_counter,
        sun_failure=sun_failure,
        old_sun_counter=old_sun_counter,
        old_sun_failure=old_sun_failure,
    )


def void(
    original: LedgerRequest,
    *,
    card_uid: str | None = None,
    request_id: str | None = None,
    kiosk_id: str | None = None,
    seq: int = 2,
    staff_id: str = "staff-1",
) -> LedgerRequest:
    """(1.1) A void of ``original`` (a bar order), from its kiosk and on its card unless told."""
    request = Void(
        request_id=request_id or next_id("void"),
        kiosk_id=kiosk_id or original.request.kiosk_id,
        seq=seq,
        created_at_ms=int(time.time() * 1000),
        card_uid=card_uid or original.request.card_uid,
        currency=CURRENCY,
        original_request_id=original.request.request_id,
        staff_id=staff_id,
    )
    return LedgerRequest(request, sha256_of(request))


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
