"""The decode pipeline (authenticate, parse_authenticated), encoders and result handling."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.codec import (
    AuthenticatedMessage,
    authenticate,
    build_result,
    decode_scan,
    decode_status,
    encode_request,
    encode_result,
    encode_scan,
    encode_status,
    parse_authenticated,
    verify_result,
)
from protocol.errors import ErrorCode, ProtocolError, Status
from protocol.jws import sign_compact
from protocol.keys import b64url_encode
from protocol.limits import MESSAGE_BYTES_MAX, RESULT_MESSAGE_LENGTH_MAX
from protocol.models import (
    BarItem,
    BarOrder,
    CheckpointRecharge,
    KioskStatus,
    Result,
    ScanRecord,
    parse_request,
)

from .support import (
    CHECKPOINT_KEY,
    CHECKPOINT_KIOSK_ID,
    CLOUD_KEY,
    CREATED_AT_MS,
    CURRENCY,
    KIOSK_ID,
    KIOSK_KEY,
    NOW_MS,
    OTHER_KIOSK_KEY,
    bar_order_document,
    decode_request,
    item,
    lookup,
    order_with_items,
    recharge_document,
    result_for_error,
    sign_document,
    sign_with_header,
)

NO_ECHO: dict[str, object] = {}
DAY_MS = 86_400_000


def authenticate_failure(raw: bytes, topic_kiosk_id: str = KIOSK_ID) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        authenticate(raw, topic_kiosk_id=topic_kiosk_id, public_key_for=lookup)
    return caught.value


def authenticated(raw: bytes, topic_kiosk_id: str = KIOSK_ID) -> AuthenticatedMessage:
    return authenticate(raw, topic_kiosk_id=topic_kiosk_id, public_key_for=lookup)


def parse_failure(raw: bytes, now_ms: int = NOW_MS, **kwargs: int) -> ProtocolError:
    message = authenticated(raw)
    with pytest.raises(ProtocolError) as caught:
        parse_authenticated(message, currency=CURRENCY, now_ms=now_ms, **kwargs)
    return caught.value


# --- happy path ---------------------------------------------------------------------------


def test_encode_then_decode_a_bar_order() -> None:
    order = parse_request(bar_order_document(), currency=CURRENCY)
    raw = encode_request(order, KIOSK_KEY)
    message = authenticated(raw)
    assert message.kiosk_id == KIOSK_ID
    assert message.document == bar_order_document()
    assert message.payload_sha256 == hashlib.sha256(message.payload).hexdigest()
    assert parse_authenticated(message, currency=CURRENCY, now_ms=NOW_MS) == order


def test_encode_then_decode_a_recharge() -> None:
    recharge = parse_request(recharge_document(), currency=CURRENCY)
    raw = encode_request(recharge, CHECKPOINT_KEY)
    decoded = decode_request(
        raw,
        topic_kiosk_id=CHECKPOINT_KIOSK_ID,
        public_key_for=lookup,
        currency=CURRENCY,
        now_ms=NOW_MS,
    )
    assert decoded == recharge


def test_encoded_request_is_canonical_json() -> None:
    order = parse_request(bar_order_document(), currency=CURRENCY)
    payload = authenticated(encode_request(order, KIOSK_KEY)).payload
    assert (
        payload
        == json.dumps(
            bar_order_document(), separators=(",", ":"), sort_keys=True, ensure_ascii=False
        ).encode()
    )


def test_encoding_is_deterministic_and_the_hash_identifies_the_bytes() -> None:
    order = parse_request(bar_order_document(), currency=CURRENCY)
    assert encode_request(order, KIOSK_KEY) == encode_request(order, KIOSK_KEY)
    canonical = authenticated(encode_request(order, KIOSK_KEY))
    # The same request serialised differently is a different payload (and still accepted).
    spaced = json.dumps(bar_order_document(), indent=1).encode()
    other = authenticated(sign_compact(spaced, KIOSK_KEY, KIOSK_ID))
    assert other.payload_sha256 != canonical.payload_sha256
    assert parse_authenticated(other, currency=CURRENCY, now_ms=NOW_MS) == order


def test_encode_request_refuses_invalid_requests() -> None:
    # An invalid request cannot be built: the kiosk gets the ProtocolError at construction.
    with pytest.raises(ProtocolError) as caught:
        BarOrder("r1", KIOSK_ID, 1, 0, "04A1B2C3", "EUR", (BarItem("x" * 65, 1, 1),), 1)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert "name" in caught.value.message
    # Over the deployment's top-up limit, which only the encoder (and the cloud) knows.
    too_much = CheckpointRecharge("r1", KIOSK_ID, 1, 0, "04A1B2C3", "EUR", 100_001, "cash", "s")
    with pytest.raises(ProtocolError):
        encode_request(too_much, KIOSK_KEY)
    encode_request(too_much, KIOSK_KEY, topup_cents_max=200_000)


def test_encode_request_refuses_orders_over_the_message_size() -> None:
    names = ["\U0001f37a" * 64 for _ in range(50)]  # valid, but 50 x 256 bytes of names
    document = order_with_items([item(name) for name in names])
    order = parse_request(document, currency=CURRENCY)
    with pytest.raises(ProtocolError) as caught:
        encode_request(order, KIOSK_KEY)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert "8192" in caught.value.message


# --- authentication: order of checks and codes --------------------------------------------


def test_kid_must_equal_the_topic_kiosk_and_no_key_is_looked_up() -> None:
    looked_up: list[str] = []

    def recording_lookup(kiosk_id: str) -> Ed25519PublicKey | None:
        looked_up.append(kiosk_id)
        return lookup(kiosk_id)

    raw = sign_document(bar_order_document(), kid="bar-02")
    with pytest.raises(ProtocolError) as caught:
        authenticate(raw, topic_kiosk_id=KIOSK_ID, public_key_for=recording_lookup)
    assert caught.value.code is ErrorCode.INVALID_SIGNATURE
    assert caught.value.echo == NO_ECHO
    assert looked_up == []


@pytest.mark.parametrize("kid", ["b\u0430r-01", "BAR-01", "bar-01 ", "cloud"])
def test_look_alike_kid_is_invalid_signature(kid: str) -> None:
    raw = sign_document(bar_order_document(), kid=kid)
    assert authenticate_failure(raw).code is ErrorCode.INVALID_SIGNATURE


def test_unregistered_kiosk_is_unknown_kiosk() -> None:
    raw = sign_document(bar_order_document(kiosk_id="bar-99"), key=OTHER_KIOSK_KEY, kid="bar-99")
    error = authenticate_failure(raw, topic_kiosk_id="bar-99")
    assert error.code is ErrorCode.UNKNOWN_KIOSK
    assert error.echo == NO_ECHO


def test_unknown_kiosk_takes_precedence_over_a_bad_signature() -> None:
    raw = sign_document(bar_order_document(kiosk_id="bar-99"), key=KIOSK_KEY, kid="bar-99")
    assert authenticate_failure(raw, topic_kiosk_id="bar-99").code is ErrorCode.UNKNOWN_KIOSK


def test_signature_by_another_kiosk_is_invalid_signature() -> None:
    raw = sign_document(bar_order_document(), key=OTHER_KIOSK_KEY)
    assert authenticate_failure(raw).code is ErrorCode.INVALID_SIGNATURE


def test_bad_signature_takes_precedence_over_a_bad_payload() -> None:
    raw = sign_compact(b"not json", OTHER_KIOSK_KEY, KIOSK_ID)
    assert authenticate_failure(raw).code is ErrorCode.INVALID_SIGNATURE


def test_oversize_takes_precedence_over_everything() -> None:
    raw = sign_compact(b"x" * MESSAGE_BYTES_MAX, OTHER_KIOSK_KEY, "nobody")
    assert authenticate_failure(raw).code is ErrorCode.INVALID_REQUEST


def test_kiosk_cannot_speak_for_another_kiosk() -> None:
    # Signed correctly by bar-01, sent on bar-01's topic, but claiming to be checkpoint-1.
    raw = sign_document(bar_order_document(kiosk_id=CHECKPOINT_KIOSK_ID))
    error = authenticate_failure(raw)
    assert error.code is ErrorCode.INVALID_SIGNATURE
    # ... nor publish its own message on another kiosk's topic.
    raw = sign_document(bar_order_document())
    assert authenticate_failure(raw, topic_kiosk_id=CHECKPOINT_KIOSK_ID).code is (
        ErrorCode.INVALID_SIGNATURE
    )


@pytest.mark.parametrize("kiosk_id", [None, 1, "b\u0430r-01", ["bar-01"], "BAR-01"])
def test_payload_kiosk_id_must_equal_the_topic(kiosk_id: object) -> None:
    raw = sign_document(bar_order_document(kiosk_id=kiosk_id))
    assert authenticate_failure(raw).code is ErrorCode.INVALID_SIGNATURE


def test_payload_without_kiosk_id_is_not_authenticated() -> None:
    raw = sign_document({"v": 1})
    assert authenticate_failure(raw).code is ErrorCode.INVALID_SIGNATURE


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b'{"kiosk_id":"bar-01","kiosk_id":"bar-01"}',
        b'["bar-01"]',
        b'"bar-01"',
        b'{"kiosk_id":"bar-01","seq":NaN}',
        b'{"kiosk_id":"bar-01","x":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"kiosk_id":"bar-01","seq":' + b"9" * 5000 + b"}",
        b"",
    ],
)
def test_signed_payload_that_is_not_a_strict_json_object_is_not_authenticated(
    payload: bytes,
) -> None:
    error = authenticate_failure(sign_compact(payload, KIOSK_KEY, KIOSK_ID))
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.echo == NO_ECHO


def test_extra_header_member_is_never_authenticated_even_if_signed() -> None:
    payload = json.dumps(bar_order_document()).encode()
    raw = sign_with_header(b'{"alg":"EdDSA","kid":"bar-01","crit":["b64"]}', payload)
    assert authenticate_failure(raw).code is ErrorCode.INVALID_SIGNATURE


def test_not_a_jws_is_invalid_request() -> None:
    raw = json.dumps(bar_order_document()).encode()
    error = authenticate_failure(raw)
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.echo == NO_ECHO


def test_invalid_topic_kiosk_is_invalid_request() -> None:
    raw = sign_document(bar_order_document())
    assert authenticate_failure(raw, topic_kiosk_id="Bar-01").code is ErrorCode.INVALID_REQUEST


def test_lookup_failures_propagate_as_they_are() -> None:
    def broken_lookup(kiosk_id: str) -> Ed25519PublicKey | None:
        raise ConnectionError("database is away")

    with pytest.raises(ConnectionError):
        authenticate(
            sign_document(bar_order_document()),
            topic_kiosk_id=KIOSK_ID,
            public_key_for=broken_lookup,
        )


def token_of_length(length: int) -> tuple[str, bytes]:
    """(kiosk_id, a valid signed bar order of exactly ``length`` bytes).

    The payload is 50 items with 64-character names; ``sign_document`` writes "\u00e9" as a
    6-byte escape, so each e-acute adds 5 bytes and trimming the last name removes 1 each.
    """
    for kiosk_id in (KIOSK_ID, "bar-012"):
        header_length = len(sign_document({}, kid=kiosk_id).split(b".")[0])
        payload_b64_length = length - header_length - 1 - 1 - 86
        # base64url of n bytes has ceil(4n/3) characters; some lengths have no n.
        payload_length = next(
            (n for n in range(payload_b64_length) if -(-4 * n // 3) == payload_b64_length), None
        )
        if payload_length is None:
            continue
        ascii_order = order_with_items([item("n" * 64)] * 50, kiosk_id=kiosk_id)
        ascii_length = len(json.dumps(ascii_order, separators=(",", ":"), sort_keys=True))
        missing = payload_length - ascii_length
        assert missing > 0
        accents, trim = -(-missing // 5), -(-missing // 5) * 5 - missing
        names = ["\u00e9" * min(64, max(0, accents - 64 * index)) for index in range(50)]
        names = [name + "n" * (64 - len(name)) for name in names]
        names[-1] = names[-1][: 64 - trim]
        raw = sign_document(
            order_with_items([item(name) for name in names], kiosk_id=kiosk_id), kid=kiosk_id
        )
        assert len(raw) == length, (len(raw), length)
        return kiosk_id, raw
    raise AssertionError(length)


def test_a_full_size_order_is_accepted_and_one_byte_more_is_not() -> None:
    kiosk_id, fitting = token_of_length(MESSAGE_BYTES_MAX)
    assert len(fitting) == 8192
    keys = {kiosk_id: KIOSK_KEY.public_key()}
    message = authenticate(fitting, topic_kiosk_id=kiosk_id, public_key_for=keys.get)
    parse_authenticated(message, currency=CURRENCY, now_ms=NOW_MS)

    kiosk_id, over = token_of_length(MESSAGE_BYTES_MAX + 1)
    assert len(over) == 8193
    keys = {kiosk_id: KIOSK_KEY.public_key()}
    with pytest.raises(ProtocolError) as caught:
        authenticate(over, topic_kiosk_id=kiosk_id, public_key_for=keys.get)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert "8192" in caught.value.message


# --- after authentication: schema, staleness, echo ----------------------------------------


def test_schema_failure_echoes_the_valid_fields() -> None:
    raw = sign_document(bar_order_document(total_cents=1))
    error = parse_failure(raw)
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.echo == {
        "request_id": "018f3b2a-7c4e-7def-8a12-3456789abcde",
        "kiosk_id": KIOSK_ID,
        "seq": 42,
        "card_uid": "04A1B2C3D4E5F6",
    }


def test_schema_failure_echoes_null_for_invalid_fields() -> None:
    raw = sign_document(bar_order_document(request_id="a b", seq=1.0, card_uid="\uff10" * 8))
    assert parse_failure(raw).echo == {
        "request_id": None,
        "kiosk_id": KIOSK_ID,
        "seq": None,
        "card_uid": None,
    }


def test_huge_integer_in_a_signed_request_is_invalid_request() -> None:
    raw = sign_document(bar_order_document(seq=10**400))
    error = parse_failure(raw)
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.echo["seq"] is None
    assert len(error.message) < 100


def test_wrong_currency_is_invalid_request() -> None:
    error = parse_failure(sign_document(bar_order_document(currency="USD")))
    assert error.code is ErrorCode.INVALID_REQUEST
    assert error.echo["request_id"] is not None


@pytest.mark.parametrize(
    ("age_ms", "stale"),
    [
        (7 * DAY_MS, False),
        (7 * DAY_MS + 1, True),
        (0, False),
        (-300_000, False),
        (-300_001, True),
        (-DAY_MS * 365 * 100, True),
    ],
)
def test_staleness_bounds_are_inclusive(age_ms: int, stale: bool) -> None:
    raw = sign_document(bar_order_document())
    now_ms = CREATED_AT_MS + age_ms
    if stale:
        error = parse_failure(raw, now_ms=now_ms)
        assert error.code is ErrorCode.STALE_REQUEST
        assert error.echo["request_id"] == "018f3b2a-7c4e-7def-8a12-3456789abcde"
        assert error.echo["seq"] == 42
    else:
        parse_authenticated(authenticated(raw), currency=CURRENCY, now_ms=now_ms)


def test_staleness_windows_are_configurable() -> None:
    message = authenticated(sign_document(bar_order_document()))
    parse_authenticated(message, currency=CURRENCY, now_ms=CREATED_AT_MS + 60_000, stale_after_s=60)
    with pytest.raises(ProtocolError):
        parse_authenticated(
            message, currency=CURRENCY, now_ms=CREATED_AT_MS + 60_001, stale_after_s=60
        )
    with pytest.raises(ProtocolError):
        parse_authenticated(message, currency=CURRENCY, now_ms=CREATED_AT_MS - 1, future_skew_s=0)


def test_schema_is_checked_before_staleness() -> None:
    raw = sign_document(bar_order_document(total_cents=1))
    assert parse_failure(raw, now_ms=CREATED_AT_MS + 30 * DAY_MS).code is ErrorCode.INVALID_REQUEST


def test_topup_limit_applies_after_authentication() -> None:
    raw = sign_document(
        recharge_document(amount_cents=100_001), CHECKPOINT_KEY, CHECKPOINT_KIOSK_ID
    )
    message = authenticated(raw, CHECKPOINT_KIOSK_ID)
    with pytest.raises(ProtocolError) as caught:
        parse_authenticated(message, currency=CURRENCY, now_ms=NOW_MS)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert caught.value.echo["card_uid"] == "04A1B2C3"
    parse_authenticated(message, currency=CURRENCY, now_ms=NOW_MS, topup_cents_max=100_001)


# --- results ------------------------------------------------------------------------------


def approved(**changes: object) -> Result:
    fields: dict[str, object] = {
        "request_id": "r1",
        "kiosk_id": KIOSK_ID,
        "seq": 42,
        "card_uid": "04A1B2C3",
        "error_code": None,
        "message": "Paid 11.00",
        "transaction_id": "tx-1",
        "previous_balance_cents": 5000,
        "new_balance_cents": 3900,
        "replayed": False,
        "processed_at_ms": NOW_MS,
    }
    fields.update(changes)
    if "debt_cents" not in fields:
        # Null exactly when the balances are: what every producer of a result must write.
        balances = (fields["previous_balance_cents"], fields["new_balance_cents"])
        fields["debt_cents"] = None if balances == (None, None) else 0
    return build_result(**fields)  # type: ignore[arg-type]


def test_build_result_derives_status() -> None:
    assert approved().status is Status.APPROVED
    declined = approved(
        error_code=ErrorCode.INSUFFICIENT_FUNDS, transaction_id=None, new_balance_cents=5000
    )
    assert declined.status is Status.DECLINED
    rejected = approved(
        error_code=ErrorCode.OPERATION_NOT_ALLOWED,
        transaction_id=None,
        previous_balance_cents=None,
        new_balance_cents=None,
    )
    assert rejected.status is Status.REJECTED


def test_build_result_accepts_the_code_as_text() -> None:
    result = approved(error_code="CARD_BLOCKED", transaction_id=None, new_balance_cents=5000)
    assert result.error_code is ErrorCode.CARD_BLOCKED
    assert result.status is Status.DECLINED


def test_build_result_truncates_and_cleans_the_message() -> None:
    result = approved(message="a\nb" + "x" * 500)
    assert len(result.message) == RESULT_MESSAGE_LENGTH_MAX
    assert result.message.startswith("a\ufffdb")


@pytest.mark.parametrize(
    "changes",
    [
        {"transaction_id": None},
        {"error_code": ErrorCode.CARD_BLOCKED},  # declined with a transaction
        {"previous_balance_cents": None},
        {"request_id": "not valid"},
        {"processed_at_ms": -1},
        {"seq": True},
    ],
)
def test_build_result_refuses_contradictions(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        approved(**changes)


def test_result_for_an_unauthenticated_error_echoes_nothing() -> None:
    error = authenticate_failure(sign_document(bar_order_document(), key=OTHER_KIOSK_KEY))
    result = result_for_error(error, processed_at_ms=NOW_MS)
    assert (result.request_id, result.kiosk_id, result.seq, result.card_uid) == (None,) * 4
    assert result.status is Status.REJECTED
    assert result.error_code is ErrorCode.INVALID_SIGNATURE
    assert result.previous_balance_cents is None


def test_result_for_an_authenticated_error_echoes() -> None:
    error = parse_failure(sign_document(bar_order_document(card_uid="bad")))
    result = result_for_error(error, processed_at_ms=NOW_MS)
    assert (result.request_id, result.kiosk_id, result.seq, result.card_uid) == (
        "018f3b2a-7c4e-7def-8a12-3456789abcde",
        KIOSK_ID,
        42,
        None,
    )


def test_result_round_trip_through_the_kiosk() -> None:
    result = approved()
    raw = encode_result(result, CLOUD_KEY)
    assert b'"kid":"cloud"' in __import__("base64").urlsafe_b64decode(raw.split(b".")[0] + b"==")
    assert verify_result(raw, cloud_public_key=CLOUD_KEY.public_key()) == result
    assert (
        verify_result(
            raw, cloud_public_key=CLOUD_KEY.public_key(), outstanding={"r1"}, kiosk_id=KIOSK_ID
        )
        == result
    )


def verify_failure(raw: bytes, **kwargs: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        verify_result(raw, cloud_public_key=CLOUD_KEY.public_key(), **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_result_signed_by_anyone_else_is_refused() -> None:
    payload = json.dumps(
        {
            "v": 1,
            "request_id": "r1",
            "kiosk_id": KIOSK_ID,
            "seq": 42,
            "card_uid": "04A1B2C3",
            "status": "approved",
            "error_code": None,
            "message": "free beer",
            "transaction_id": "t",
            "previous_balance_cents": 0,
            "new_balance_cents": 0,
            "debt_cents": 0,
            "replayed": False,
            "processed_at_ms": 1,
        }
    ).encode()
    forged = sign_compact(payload, KIOSK_KEY, "cloud")
    assert verify_failure(forged).code is ErrorCode.INVALID_SIGNATURE
    with_kiosk_kid = sign_compact(payload, CLOUD_KEY, KIOSK_ID)
    assert verify_failure(with_kiosk_kid).code is ErrorCode.INVALID_SIGNATURE
    unsigned = (
        b64url_encode(b'{"alg":"none","kid":"cloud"}') + "." + b64url_encode(payload) + "."
    ).encode()
    assert verify_failure(unsigned).code is ErrorCode.INVALID_SIGNATURE
    verify_result(
        sign_compact(payload, CLOUD_KEY, "cloud"), cloud_public_key=CLOUD_KEY.public_key()
    )


def test_result_must_answer_an_outstanding_request() -> None:
    raw = encode_result(approved(), CLOUD_KEY)
    assert verify_failure(raw, outstanding={"r2"}).code is ErrorCode.INVALID_REQUEST
    assert verify_failure(raw, outstanding=set()).code is ErrorCode.INVALID_REQUEST
    assert verify_failure(raw, kiosk_id="bar-02").code is ErrorCode.INVALID_REQUEST
    anonymous = result_for_error(
        ProtocolError(ErrorCode.INVALID_SIGNATURE, "bad"), processed_at_ms=NOW_MS
    )
    raw = encode_result(anonymous, CLOUD_KEY)
    assert verify_result(raw, cloud_public_key=CLOUD_KEY.public_key(), kiosk_id=KIOSK_ID)
    assert verify_failure(raw, outstanding={"r1"}).code is ErrorCode.INVALID_REQUEST


@dataclass(frozen=True, slots=True)
class UncheckedResult(Result):
    """A subclass that does not check itself when built (like the ledger's Outcome)."""

    def __post_init__(self) -> None:
        pass


def test_encode_result_checks_a_subclass_that_skipped_the_rules() -> None:
    fields = {name: getattr(approved(), name) for name in Result.__slots__}
    assert encode_result(UncheckedResult(**fields), CLOUD_KEY) == encode_result(
        approved(), CLOUD_KEY
    )
    with pytest.raises(ProtocolError, match="transaction_id"):
        encode_result(UncheckedResult(**{**fields, "transaction_id": None}), CLOUD_KEY)
    with pytest.raises(ProtocolError, match="kiosk_id"):
        encode_result(UncheckedResult(**{**fields, "kiosk_id": None}), CLOUD_KEY)


def test_result_with_unknown_fields_is_refused_even_when_signed() -> None:
    from protocol.models import result_to_dict

    document = {**result_to_dict(approved()), "bonus_cents": 100}
    raw = sign_compact(json.dumps(document).encode(), CLOUD_KEY, "cloud")
    assert verify_failure(raw).code is ErrorCode.INVALID_REQUEST


# --- scans and status ---------------------------------------------------------------------


def test_scan_round_trip() -> None:
    record = ScanRecord(KIOSK_ID, CREATED_AT_MS, None, "read_error", "ACR122U", 2500)
    raw = encode_scan(record, KIOSK_KEY)
    assert decode_scan(raw, topic_kiosk_id=KIOSK_ID, public_key_for=lookup) == record


def test_scan_is_authenticated_like_a_request() -> None:
    record = ScanRecord(KIOSK_ID, CREATED_AT_MS, "04A1B2C3", "ok", "ACR122U", 180)
    raw = encode_scan(record, OTHER_KIOSK_KEY)
    with pytest.raises(ProtocolError) as caught:
        decode_scan(raw, topic_kiosk_id=KIOSK_ID, public_key_for=lookup)
    assert caught.value.code is ErrorCode.INVALID_SIGNATURE
    with pytest.raises(ProtocolError):
        encode_scan(ScanRecord(KIOSK_ID, 0, None, "ok", "ACR122U", 1), KIOSK_KEY)


def test_status_round_trip_is_unsigned_json() -> None:
    status = KioskStatus(KIOSK_ID, "offline", CREATED_AT_MS, "1.0.0")
    raw = encode_status(status)
    assert json.loads(raw)["state"] == "offline"
    assert decode_status(raw, topic_kiosk_id=KIOSK_ID) == status
    with pytest.raises(ProtocolError):
        decode_status(raw, topic_kiosk_id="bar-02")
    with pytest.raises(ProtocolError):
        decode_status(b" " * (MESSAGE_BYTES_MAX + 1), topic_kiosk_id=KIOSK_ID)
