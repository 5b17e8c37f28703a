"""The consumer's pure decision per request: which rule applies, what is echoed, what is stored."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.consumer.decisions import (
    Apply,
    DeadLetter,
    KioskView,
    Reject,
    RequestPolicy,
    decide_request,
)
from protocol.codec import encode_request
from protocol.errors import ErrorCode
from protocol.jws import sign_compact
from protocol.models import BarItem, BarOrder, CheckpointRecharge

KEY = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes([8]) * 32)
NOW_MS = 1_760_000_000_000
POLICY = RequestPolicy(currency="EUR", stale_after_s=600, future_skew_s=60, topup_cents_max=100_000)


def order(kiosk_id: str = "bar-1", **changes: object) -> BarOrder:
    fields: dict[str, object] = {
        "request_id": "req-1",
        "kiosk_id": kiosk_id,
        "seq": 5,
        "created_at_ms": NOW_MS - 1000,
        "card_uid": "04A1B2C3",
        "currency": "EUR",
        "items": (BarItem(name="Beer", quantity=2, unit_price_cents=450),),
        "total_cents": 900,
    }
    fields.update(changes)
    return BarOrder(**fields)  # type: ignore[arg-type]


def recharge(kiosk_id: str = "bar-1") -> CheckpointRecharge:
    return CheckpointRecharge(
        request_id="req-2",
        kiosk_id=kiosk_id,
        seq=6,
        created_at_ms=NOW_MS,
        card_uid="04A1B2C3",
        currency="EUR",
        amount_cents=1000,
        payment_method="cash",
        staff_id="anna",
    )


def view(role: str = "bar", enabled: bool = True) -> KioskView:
    return KioskView(public_key=KEY.public_key(), enabled=enabled, role=role)


def decide(raw: bytes, kiosk: KioskView | None = None, topic_kiosk_id: str = "bar-1"):  # type: ignore[no-untyped-def]
    return decide_request(
        raw,
        topic_kiosk_id=topic_kiosk_id,
        kiosk=kiosk if kiosk is not None else view(),
        policy=POLICY,
        now_ms=NOW_MS,
    )


def signed_document(document: dict[str, object], kid: str = "bar-1") -> bytes:
    return sign_compact(json.dumps(document).encode(), KEY, kid)


def test_a_valid_order_of_a_bar_kiosk_goes_to_the_ledger() -> None:
    raw = encode_request(order(), KEY)
    decision = decide(raw)
    assert isinstance(decision, Apply)
    assert decision.request == order()
    assert decision.echo.request_id == "req-1" and decision.echo.seq == 5
    assert len(decision.payload_sha256) == 64


def test_a_bad_signature_is_a_dead_letter_that_echoes_nothing() -> None:
    raw = encode_request(order(), OTHER_KEY)
    decision = decide(raw)
    assert isinstance(decision, DeadLetter)
    assert decision.code is ErrorCode.INVALID_SIGNATURE
    assert not decision.authenticated
    assert decision.echo.request_id is None and decision.echo.card_uid is None


def test_an_unregistered_kiosk_is_unknown() -> None:
    raw = encode_request(order(), KEY)
    decision = decide_request(raw, topic_kiosk_id="bar-1", kiosk=None, policy=POLICY, now_ms=NOW_MS)
    assert isinstance(decision, DeadLetter) and decision.code is ErrorCode.UNKNOWN_KIOSK


def test_a_message_on_another_kiosks_topic_does_not_authenticate() -> None:
    raw = encode_request(order("bar-2"), KEY)
    decision = decide(raw, topic_kiosk_id="bar-1")
    assert isinstance(decision, DeadLetter) and decision.code is ErrorCode.INVALID_SIGNATURE


def test_garbage_is_an_invalid_request_dead_letter() -> None:
    decision = decide(b"not a jws")
    assert isinstance(decision, DeadLetter) and decision.code is ErrorCode.INVALID_REQUEST


def test_a_disabled_kiosk_is_refused_for_good_with_the_fields_echoed() -> None:
    raw = encode_request(order(), KEY)
    decision = decide(raw, view(enabled=False))
    assert isinstance(decision, Reject)
    assert decision.code is ErrorCode.KIOSK_DISABLED
    assert decision.request_id == "req-1" and decision.echo.card_uid == "04A1B2C3"


@pytest.mark.parametrize(
    ("role", "request_kind", "allowed"),
    [
        ("bar", "order", True),
        ("bar", "recharge", False),
        ("checkpoint", "order", False),
        ("checkpoint", "recharge", True),
        ("all", "order", True),
        ("all", "recharge", True),
    ],
)
def test_roles_decide_which_requests_a_kiosk_may_send(
    role: str, request_kind: str, allowed: bool
) -> None:
    request = order() if request_kind == "order" else recharge()
    decision = decide(encode_request(request, KEY), view(role=role))
    if allowed:
        assert isinstance(decision, Apply)
    else:
        assert isinstance(decision, Reject)
        assert decision.code is ErrorCode.OPERATION_NOT_ALLOWED


def test_a_signed_request_breaking_the_schema_is_a_stored_rejection() -> None:
    document = {
        "v": 1,
        "type": "bar_order",
        "request_id": "req-9",
        "kiosk_id": "bar-1",
        "seq": 9,
        "created_at_ms": NOW_MS,
        "card_uid": "04A1B2C3",
        "currency": "EUR",
        "items": [{"name": "Beer", "quantity": 1, "unit_price_cents": 450}],
        "total_cents": 999,  # does not match the items
    }
    decision = decide(signed_document(document))
    assert isinstance(decision, Reject)
    assert decision.code is ErrorCode.INVALID_REQUEST and decision.request_id == "req-9"


def test_a_signed_request_without_a_valid_request_id_can_only_be_a_dead_letter() -> None:
    document = {"v": 1, "type": "bar_order", "request_id": "bad id!", "kiosk_id": "bar-1", "seq": 3}
    decision = decide(signed_document(document))
    assert isinstance(decision, DeadLetter)
    assert decision.authenticated and decision.code is ErrorCode.INVALID_REQUEST
    assert decision.echo.request_id is None and decision.echo.seq == 3


def test_an_unhashable_type_field_is_an_invalid_request_not_a_crash() -> None:
    document = {"v": 1, "type": ["bar_order"], "request_id": "req-3", "kiosk_id": "bar-1"}
    decision = decide(signed_document(document))
    assert isinstance(decision, Reject) and decision.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("offset_ms", [-601_000, 61_000])
def test_too_old_or_too_far_in_the_future_is_stale(offset_ms: int) -> None:
    raw = encode_request(order(created_at_ms=NOW_MS + offset_ms), KEY)
    decision = decide(raw)
    assert isinstance(decision, Reject) and decision.code is ErrorCode.STALE_REQUEST


def test_the_disabled_check_comes_before_the_role_and_the_schema() -> None:
    raw = encode_request(recharge(), KEY)
    decision = decide(raw, view(role="bar", enabled=False))
    assert isinstance(decision, Reject) and decision.code is ErrorCode.KIOSK_DISABLED


# --- (1.1) a top-up books into the drawer of the kiosk's registered checkpoint -------------------


def checkpoint_view(checkpoint_id: str | None) -> KioskView:
    return KioskView(KEY.public_key(), True, "checkpoint", checkpoint_id)


def test_a_top_up_without_checkpoint_goes_to_the_registered_one() -> None:
    raw = encode_request(recharge("cash-1"), KEY)
    decision = decide(raw, checkpoint_view("gate-north"), topic_kiosk_id="cash-1")
    assert isinstance(decision, Apply)
    assert isinstance(decision.request, CheckpointRecharge)
    assert decision.request.checkpoint_id == "gate-north"
    # A kiosk registered without a checkpoint is its own.
    decision = decide(raw, checkpoint_view(None), topic_kiosk_id="cash-1")
    assert isinstance(decision, Apply) and decision.request.checkpoint_id == "cash-1"  # type: ignore[union-attr]


def test_a_top_up_naming_its_own_checkpoint_is_applied_as_sent() -> None:
    request = replace(recharge("cash-1"), checkpoint_id="gate-north")
    decision = decide(encode_request(request, KEY), checkpoint_view("gate-north"), "cash-1")
    assert isinstance(decision, Apply) and decision.request == request


@pytest.mark.parametrize(("registered", "named"), [("gate-north", "gate-south"), (None, "cash-2")])
def test_a_top_up_naming_another_checkpoint_is_rejected_for_good(
    registered: str | None, named: str
) -> None:
    request = replace(recharge("cash-1"), checkpoint_id=named)
    decision = decide(encode_request(request, KEY), checkpoint_view(registered), "cash-1")
    assert isinstance(decision, Reject)
    assert decision.code is ErrorCode.INVALID_REQUEST
    assert decision.request_type == "checkpoint_recharge"
    assert decision.echo.request_id == "req-2" and decision.echo.card_uid == "04A1B2C3"
    assert named in decision.message


@pytest.mark.parametrize(
    ("role", "request_type", "allowed"),
    [
        ("bar", "void", True),
        ("bar", "card_swap", False),
        ("checkpoint", "void", False),
        ("checkpoint", "card_swap", True),
    ],
)
def test_roles_decide_who_may_void_and_swap(role: str, request_type: str, allowed: bool) -> None:
    document: dict[str, object] = {
        "v": 1,
        "type": request_type,
        "request_id": "req-10",
        "kiosk_id": "bar-1",
        "seq": 10,
        "created_at_ms": NOW_MS,
        "card_uid": "04A1B2C3D4E5F6",
        "currency": "EUR",
        "staff_id": "anna",
    }
    if request_type == "void":
        document["original_request_id"] = "req-9"
    else:
        document["old_card_uid"] = "04A1B2C3"
    decision = decide(signed_document(document), view(role=role))
    if allowed:
        assert isinstance(decision, Apply)
        assert decision.request.type == request_type
    else:
        assert isinstance(decision, Reject)
        assert decision.code is ErrorCode.OPERATION_NOT_ALLOWED
        assert decision.request_type == request_type
