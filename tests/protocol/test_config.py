"""(1.1) The cloud's messages to kiosks: config (menu, offline policy) and the deny-list, and the
``config_version`` requests cite. PROTOCOL.md "Config and deny-list", "Menus"."""

from __future__ import annotations

import itertools
import json
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import (
    _signed,
    encode_config,
    encode_denylist,
    encode_request,
    verify_config,
    verify_denylist,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.jws import sign_compact
from protocol.keys import b64url_encode
from protocol.limits import (
    CARD_UID_PATTERN,
    CONFIG_BYTES_MAX,
    CONFIG_VERSION_MAX,
    DENYLIST_CARDS_MAX,
    JSON_DEPTH_MAX,
    MENU_ITEMS_MAX,
)
from protocol.models import (
    BarItem,
    BarOrder,
    CheckpointRecharge,
    DenyList,
    KioskConfig,
    Menu,
    MenuItem,
    OfflinePolicy,
    config_to_dict,
    denylist_to_dict,
    parse_config,
    parse_denylist,
    parse_menu,
    parse_request,
    request_to_dict,
)
from protocol.strict_json import dumps_canonical, loads_strict
from protocol.topics import config_topic, denylist_topic, parse_topic

from .support import (
    CLOUD_KEY,
    CREATED_AT_MS,
    CURRENCY,
    DELETE,
    KIOSK_ID,
    KIOSK_KEY,
    apply_changes,
    bar_order_document,
    recharge_document,
    sign_with_header,
)

CLOUD_PUBLIC: Final = CLOUD_KEY.public_key()
ISSUED_AT_MS: Final = CREATED_AT_MS - 60_000
CLOUD_HEADER: Final = b'{"alg":"EdDSA","kid":"cloud"}'


def config_document(**changes: object) -> dict[str, object]:
    """A valid config for KIOSK_ID: a beer, a cup deposit, a cup return, an offline policy."""
    document: dict[str, object] = {
        "v": 1,
        "type": "config",
        "kiosk_id": KIOSK_ID,
        "version": 3,
        "issued_at_ms": ISSUED_AT_MS,
        "currency": CURRENCY,
        "menu": {
            "menu_id": "main-bar",
            "items": [
                {
                    "sku": "beer",
                    "name": "Beer 0.5 l",
                    "unit_price_cents": 550,
                    "vat_rate_bp": 1900,
                    "category": "drinks",
                },
                {"sku": "cup", "name": "Cup deposit", "unit_price_cents": 200, "is_deposit": True},
                {
                    "sku": "cup-return",
                    "name": "Cup return",
                    "unit_price_cents": 200,
                    "is_deposit": True,
                    "is_return": True,
                },
            ],
        },
        "offline": {"sale_max_cents": 2000, "card_max_cents": 5000, "kiosk_max_cents": 50_000},
    }
    return apply_changes(document, changes)


def denylist_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "v": 1,
        "type": "denylist",
        "version": 9,
        "issued_at_ms": ISSUED_AT_MS,
        "card_uids": ["04A1B2C3", "04A1B2C3D4E5F6", "0A0B0C0D"],
    }
    return apply_changes(document, changes)


def cloud_signed(document: object, key: Any = CLOUD_KEY, kid: str = "cloud") -> bytes:
    return sign_compact(dumps_canonical(document), key, kid)


def config_error(document: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        verify_config(cloud_signed(document), cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID)
    assert caught.value.code is ErrorCode.INVALID_REQUEST, caught.value
    return caught.value


def denylist_error(document: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        verify_denylist(cloud_signed(document), cloud_public_key=CLOUD_PUBLIC)
    assert caught.value.code is ErrorCode.INVALID_REQUEST, caught.value
    return caught.value


def uids(count: int, digits: int = 20) -> list[str]:
    return [f"{index:0{digits}X}" for index in range(count)]


# --- config: round trips ---------------------------------------------------------------------


def test_a_config_round_trips_through_the_wire() -> None:
    raw = cloud_signed(config_document())
    config = verify_config(raw, cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID)
    assert config.kiosk_id == KIOSK_ID and config.version == 3 and config.currency == "EUR"
    assert config.menu is not None and config.menu.menu_id == "main-bar"
    beer, cup, cup_return = config.menu.items
    assert beer == MenuItem("beer", "Beer 0.5 l", 550, vat_rate_bp=1900, category="drinks")
    assert (cup.is_deposit, cup.is_return) == (True, False)
    assert (cup_return.is_deposit, cup_return.is_return) == (True, True)
    assert config.menu.item("cup") is cup and config.menu.item("wine") is None
    assert config.offline == OfflinePolicy(2000, 5000, 50_000)
    # Encoding what was parsed gives the same canonical bytes the cloud signed.
    assert encode_config(config, CLOUD_KEY) == raw
    assert config_to_dict(config) == config_document()


def test_a_config_built_in_code_encodes_and_verifies() -> None:
    config = KioskConfig(
        kiosk_id=KIOSK_ID,
        version=1,
        issued_at_ms=ISSUED_AT_MS,
        currency="EUR",
        menu=None,
        offline=None,
    )
    raw = encode_config(config, CLOUD_KEY)
    assert verify_config(raw, cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID) == config
    # Version 1 of `kiosk add`: no menu, nothing offline; both written as null, never omitted.
    payload = json.loads(_payload(raw))
    assert payload["menu"] is None and payload["offline"] is None


def _payload(raw: bytes) -> bytes:
    from protocol.keys import b64url_decode_bytes

    decoded = b64url_decode_bytes(raw.split(b".")[1])
    assert decoded is not None
    return decoded


def test_optional_item_fields_are_omitted_when_absent() -> None:
    item = MenuItem("water", "Water", 0)
    menu = Menu("m", (item,))
    document = config_to_dict(
        KioskConfig(KIOSK_ID, 2, ISSUED_AT_MS, "EUR", menu, OfflinePolicy(1, 1, 1))
    )
    assert document["menu"] == {
        "menu_id": "m",
        "items": [{"sku": "water", "name": "Water", "unit_price_cents": 0}],
    }
    assert parse_config(document).menu == menu


def test_parse_menu_checks_a_menu_object_on_its_own() -> None:
    menu = parse_menu(config_document()["menu"])
    assert [item.sku for item in menu.items] == ["beer", "cup", "cup-return"]
    with pytest.raises(ProtocolError, match=r"menu.items\[1\].unit_price_cents"):
        parse_menu(
            apply_changes(config_document(), {"menu__items__1__unit_price_cents": -1})["menu"]
        )


# --- config: each field's bounds -------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "accepted"),
    [
        ({"version": 1}, True),
        ({"version": CONFIG_VERSION_MAX}, True),
        ({"version": 0}, False),
        ({"version": CONFIG_VERSION_MAX + 1}, False),
        ({"version": True}, False),
        ({"version": 3.0}, False),
        ({"version": "3"}, False),
        ({"issued_at_ms": 0}, True),
        ({"issued_at_ms": -1}, False),
        ({"issued_at_ms": None}, False),
        ({"kiosk_id": "cloud"}, False),
        ({"kiosk_id": "Bar-01"}, False),
        ({"currency": "eur"}, False),
        ({"currency": None}, False),
        ({"menu": None}, True),
        ({"offline": None}, True),
        ({"menu": []}, False),
        ({"offline": 1}, False),
        ({"menu__menu_id": "m" * 64}, True),
        ({"menu__menu_id": "m" * 65}, False),
        ({"menu__menu_id": ""}, False),
        ({"menu__menu_id": "bar\n1"}, False),
        ({"menu__items": []}, False),
        ({"menu__items": {}}, False),
        ({"menu__items__0__sku": "s" * 32}, True),
        ({"menu__items__0__sku": "s" * 33}, False),
        ({"menu__items__0__sku": ""}, False),
        ({"menu__items__0__sku": 7}, False),
        ({"menu__items__0__name": "n" * 64}, True),
        ({"menu__items__0__name": "n" * 65}, False),
        ({"menu__items__0__name": "Beer\u202e"}, False),
        ({"menu__items__0__unit_price_cents": 0}, True),
        ({"menu__items__0__unit_price_cents": 100_000}, True),
        ({"menu__items__0__unit_price_cents": 100_001}, False),
        ({"menu__items__0__unit_price_cents": -1}, False),
        ({"menu__items__0__unit_price_cents": 5.5}, False),
        ({"menu__items__0__is_deposit": False}, True),
        ({"menu__items__0__is_deposit": 1}, False),
        ({"menu__items__0__is_deposit": None}, False),
        ({"menu__items__0__is_return": "true"}, False),
        ({"menu__items__0__vat_rate_bp": 0}, True),
        ({"menu__items__0__vat_rate_bp": 10_000}, True),
        ({"menu__items__0__vat_rate_bp": 10_001}, False),
        ({"menu__items__0__vat_rate_bp": -1}, False),
        ({"menu__items__0__vat_rate_bp": None}, False),
        ({"menu__items__0__vat_rate_bp": DELETE}, True),
        ({"menu__items__0__category": "c" * 32}, True),
        ({"menu__items__0__category": "c" * 33}, False),
        ({"menu__items__0__category": ""}, False),
        ({"menu__items__0__category": DELETE}, True),
        ({"offline__sale_max_cents": 1}, True),
        ({"offline__sale_max_cents": 0}, False),
        ({"offline__card_max_cents": 0}, False),
        ({"offline__kiosk_max_cents": -5}, False),
        ({"offline__kiosk_max_cents": 2**63}, False),
    ],
)
def test_each_config_field_is_bounded(changes: dict[str, object], accepted: bool) -> None:
    document = config_document(**changes)
    if accepted:
        config = verify_config(
            cloud_signed(document), cloud_public_key=CLOUD_PUBLIC, kiosk_id=document["kiosk_id"]
        )
        assert parse_config(config_to_dict(config)) == config
    else:
        field = next(iter(changes)).replace("__", ".").split(".")[-1]
        assert field in config_error(document).message


def test_a_menu_holds_at_most_200_items() -> None:
    items = [{"sku": f"p{index}", "name": "P", "unit_price_cents": 100} for index in range(200)]
    config = parse_config(config_document(menu__items=items))
    assert config.menu is not None and len(config.menu.items) == MENU_ITEMS_MAX
    items.append({"sku": "one-more", "name": "P", "unit_price_cents": 100})
    assert "1..200" in config_error(config_document(menu__items=items)).message


def test_a_duplicate_sku_is_refused() -> None:
    error = config_error(config_document(menu__items__2__sku="cup"))
    assert error.message == "menu.items[2].sku 'cup' is not unique in the menu"
    with pytest.raises(ProtocolError, match="not unique"):
        Menu("m", (MenuItem("a", "A", 1), MenuItem("a", "B", 2)))


@pytest.mark.parametrize(
    "changes",
    [
        {"colour": "red"},
        {"menu__title": "Main bar"},
        {"menu__items__0__deposit_sku": "cup"},
        {"menu__items__0__quantity": 1},
        {"offline__per_hour_cents": 1},
    ],
)
def test_unknown_fields_are_refused_at_every_level(changes: dict[str, object]) -> None:
    name = next(iter(changes)).split("__")[-1]
    assert f"unknown field '{name}'" in config_error(config_document(**changes)).message


@pytest.mark.parametrize(
    "field",
    ["v", "type", "kiosk_id", "version", "issued_at_ms", "currency", "menu", "offline"],
)
def test_every_config_field_is_required(field: str) -> None:
    assert field in config_error(config_document(**{field: DELETE})).message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"v": 2}, "unsupported protocol version 2"),
        ({"type": "denylist"}, "config type must be config"),
        ({"menu__items__0__name": DELETE}, "missing field name in menu.items[0]"),
        ({"offline__card_max_cents": DELETE}, "missing field card_max_cents in offline"),
    ],
)
def test_config_schema_messages(changes: dict[str, object], message: str) -> None:
    assert message in config_error(config_document(**changes)).message


def test_models_check_themselves_when_built() -> None:
    with pytest.raises(ProtocolError, match="sku"):
        MenuItem("", "Beer", 550)
    with pytest.raises(ProtocolError, match="vat_rate_bp"):
        MenuItem("beer", "Beer", 550, vat_rate_bp=10_001)
    with pytest.raises(ProtocolError, match="is_deposit"):
        MenuItem("beer", "Beer", 550, is_deposit=1)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match=r"menu\.items"):
        Menu("m", ())
    with pytest.raises(ProtocolError, match="tuple"):
        Menu("m", [MenuItem("a", "A", 1)])  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="sale_max_cents"):
        OfflinePolicy(0, 1, 1)
    with pytest.raises(ProtocolError, match="version"):
        KioskConfig(KIOSK_ID, 0, ISSUED_AT_MS, "EUR", None, None)
    with pytest.raises(ProtocolError, match="kiosk_id"):
        KioskConfig("cloud", 1, ISSUED_AT_MS, "EUR", None, None)
    with pytest.raises(ProtocolError, match="menu"):
        KioskConfig(KIOSK_ID, 1, ISSUED_AT_MS, "EUR", {"menu_id": "m"}, None)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="sorted"):
        DenyList(1, ISSUED_AT_MS, ("0A0B0C0D", "04A1B2C3"))


# --- config: signature, kid, kiosk, size, depth ------------------------------------------------


def test_a_config_signed_by_another_key_is_refused() -> None:
    forged = cloud_signed(config_document(), key=KIOSK_KEY)
    with pytest.raises(ProtocolError) as caught:
        verify_config(forged, cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID)
    assert caught.value.code is ErrorCode.INVALID_SIGNATURE


def test_a_config_with_another_kid_is_refused_before_its_signature() -> None:
    # Signed by the kiosk itself, under its own kid: not the cloud's message, whatever it says.
    raw = cloud_signed(config_document(), key=KIOSK_KEY, kid=KIOSK_ID)
    with pytest.raises(ProtocolError) as caught:
        verify_config(raw, cloud_public_key=KIOSK_KEY.public_key(), kiosk_id=KIOSK_ID)
    assert caught.value.code is ErrorCode.INVALID_SIGNATURE
    assert caught.value.message == "config kid must be cloud"


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"none","kid":"cloud"}',
        b'{"alg":"EdDSA","kid":"cloud","jwk":{}}',
        b'{"alg":"EdDSA","kid":"cloud","crit":["b64"]}',
    ],
)
def test_a_config_header_is_as_strict_as_every_other(header: bytes) -> None:
    raw = sign_with_header(header, dumps_canonical(config_document()), CLOUD_KEY)
    with pytest.raises(ProtocolError) as caught:
        verify_config(raw, cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID)
    assert caught.value.code is ErrorCode.INVALID_SIGNATURE


def test_another_kiosks_config_is_refused() -> None:
    raw = cloud_signed(config_document(kiosk_id="bar-02"))
    with pytest.raises(ProtocolError) as caught:
        verify_config(raw, cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert caught.value.message == "config is addressed to another kiosk"
    assert verify_config(raw, cloud_public_key=CLOUD_PUBLIC, kiosk_id="bar-02").version == 3


def _padded(document: dict[str, object], length: int) -> bytes:
    """A validly signed message of exactly ``length`` bytes: the JSON padded with whitespace.

    Unpadded base64url of n bytes has (4n + 2) // 3 characters, which never leaves 1 over a
    multiple of 4: a ``typ`` member of the right length shifts the header so the total fits."""
    canonical = dumps_canonical(document)
    for typ in ("", "J", "JW", "JWS"):
        header = (
            CLOUD_HEADER if not typ else b'{"alg":"EdDSA","kid":"cloud","typ":"%s"}' % typ.encode()
        )
        payload_chars = length - len(b64url_encode(header)) - 2 - 86  # two dots, the signature
        size = (3 * payload_chars) // 4
        while (4 * size + 2) // 3 < payload_chars:
            size += 1
        if (4 * size + 2) // 3 == payload_chars:
            payload = canonical[:-1] + b" " * (size - len(canonical)) + b"}"
            token = sign_with_header(header, payload, CLOUD_KEY)
            assert len(token) == length
            return token
    raise AssertionError(f"no header makes {length} bytes")


def test_a_config_of_the_size_limit_is_accepted_and_one_byte_more_is_not() -> None:
    fitting = _padded(config_document(), CONFIG_BYTES_MAX)
    assert len(fitting) == 196_608
    assert verify_config(fitting, cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID).version == 3
    # One byte more, validly signed.
    over = _padded(config_document(), CONFIG_BYTES_MAX + 1)
    with pytest.raises(ProtocolError) as caught:
        verify_config(over, cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert caught.value.message == "message larger than 196608 bytes"
    # Checked on the raw bytes before anything is decoded: garbage of that size says the same.
    with pytest.raises(ProtocolError, match="larger than 196608"):
        verify_denylist(b"\xff" * 196_609, cloud_public_key=CLOUD_PUBLIC)


def test_the_encoder_refuses_to_sign_more_than_the_limit() -> None:
    config = parse_config(config_document())
    assert len(encode_config(config, CLOUD_KEY)) < 2000
    big = DenyList(1, ISSUED_AT_MS, tuple(uids(DENYLIST_CARDS_MAX)))
    assert len(encode_denylist(big, CLOUD_KEY)) <= CONFIG_BYTES_MAX
    # No valid config or deny-list reaches the limit (6000 of the longest UIDs above): what
    # refuses more is the signing step both encoders share.
    with pytest.raises(ProtocolError, match="over 196608"):
        _signed(b"x" * CONFIG_BYTES_MAX, CLOUD_KEY, "cloud", CONFIG_BYTES_MAX)


def test_a_config_nests_exactly_as_deep_as_the_parser_allows() -> None:
    payload = dumps_canonical(config_document())
    loads_strict(payload, depth_max=JSON_DEPTH_MAX)  # object > menu > items > item: 4
    with pytest.raises(ProtocolError, match="nested deeper than 3"):
        loads_strict(payload, depth_max=3)
    deeper = config_document(menu__items__0__category={"deeper": {}})
    error = config_error(deeper)
    assert error.message == f"JSON nested deeper than {JSON_DEPTH_MAX} levels"


def test_a_config_with_duplicate_keys_is_refused() -> None:
    payload = dumps_canonical(config_document())
    payload = payload.replace(b'"version":3', b'"version":3,"version":4')
    raw = sign_with_header(CLOUD_HEADER, payload, CLOUD_KEY)
    with pytest.raises(ProtocolError, match="duplicate key"):
        verify_config(raw, cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID)


# --- deny-list -----------------------------------------------------------------------------------


def test_a_denylist_round_trips() -> None:
    raw = cloud_signed(denylist_document())
    denylist = verify_denylist(raw, cloud_public_key=CLOUD_PUBLIC)
    assert denylist == DenyList(9, ISSUED_AT_MS, ("04A1B2C3", "04A1B2C3D4E5F6", "0A0B0C0D"))
    assert encode_denylist(denylist, CLOUD_KEY) == raw
    assert denylist_to_dict(denylist) == denylist_document()
    assert parse_denylist(denylist_document(card_uids=[])).card_uids == ()


def test_the_largest_denylist_fits_the_message_size() -> None:
    cards = uids(DENYLIST_CARDS_MAX, digits=20)  # the longest UIDs: 10 bytes
    raw = cloud_signed(denylist_document(card_uids=cards))
    assert len(raw) <= CONFIG_BYTES_MAX
    assert verify_denylist(raw, cloud_public_key=CLOUD_PUBLIC).card_uids == tuple(cards)
    error = denylist_error(denylist_document(card_uids=uids(DENYLIST_CARDS_MAX + 1, digits=8)))
    assert error.message == "card_uids may hold at most 6000 cards, got 6001"


@pytest.mark.parametrize(
    ("cards", "message"),
    [
        (["0A0B0C0D", "04A1B2C3"], "card_uids must be sorted and unique: unsorted card_uids[1]"),
        (["04A1B2C3", "04A1B2C3"], "card_uids must be sorted and unique: duplicate card_uids[1]"),
        (["04a1b2c3"], "invalid card_uids[0]"),
        (["04A1B2C3D4"], "invalid card_uids[0]"),
        ([4], "invalid card_uids[0]"),
        ([None], "invalid card_uids[0]"),
        (["04A1B2C3,0A0B0C0D"], "invalid card_uids[0]"),  # two cards in one string
        (["04A1B2C3", ",0A0B0C0D"], "invalid card_uids[1]"),
        (["04A1B2C3", ""], "invalid card_uids[1]"),
        (["04A1B2C3\n"], "invalid card_uids[0]"),
        (["04A1B2C3", "0A0B0C0D", "0A0B0C0D1"], "invalid card_uids[2]"),
    ],
)
def test_denylist_cards_are_valid_sorted_and_unique(cards: list[object], message: str) -> None:
    assert message in denylist_error(denylist_document(card_uids=cards)).message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"card_uids": "04A1B2C3"}, "card_uids must be an array"),
        ({"version": 0}, "version must be 1.."),
        ({"kiosk_id": KIOSK_ID}, "unknown field 'kiosk_id' in denylist"),
        ({"issued_at_ms": DELETE}, "missing field issued_at_ms in denylist"),
        ({"type": "config"}, "denylist type must be denylist"),
    ],
)
def test_denylist_schema(changes: dict[str, object], message: str) -> None:
    assert message in denylist_error(denylist_document(**changes)).message


def test_a_forged_denylist_is_refused() -> None:
    for raw in (
        cloud_signed(denylist_document(), key=KIOSK_KEY),
        cloud_signed(denylist_document(), key=CLOUD_KEY, kid=KIOSK_ID),
    ):
        with pytest.raises(ProtocolError) as caught:
            verify_denylist(raw, cloud_public_key=CLOUD_PUBLIC)
        assert caught.value.code is ErrorCode.INVALID_SIGNATURE


def test_a_config_is_no_denylist_and_the_other_way_round() -> None:
    config = cloud_signed(config_document())
    denylist = cloud_signed(denylist_document())
    with pytest.raises(ProtocolError, match="denylist type must be denylist"):
        verify_denylist(config, cloud_public_key=CLOUD_PUBLIC)
    with pytest.raises(ProtocolError, match="config type must be config"):
        verify_config(denylist, cloud_public_key=CLOUD_PUBLIC, kiosk_id=KIOSK_ID)


# --- config_version on requests ----------------------------------------------------------------


def test_config_version_round_trips_on_both_request_types_and_is_omitted_when_none() -> None:
    order = parse_request(bar_order_document(config_version=7), currency=CURRENCY)
    assert isinstance(order, BarOrder) and order.config_version == 7
    assert request_to_dict(order)["config_version"] == 7
    recharge = parse_request(recharge_document(config_version=1), currency=CURRENCY)
    assert isinstance(recharge, CheckpointRecharge) and recharge.config_version == 1
    plain = parse_request(bar_order_document(), currency=CURRENCY)
    assert plain.config_version is None and "config_version" not in request_to_dict(plain)
    built = BarOrder(
        request_id="r-1",
        kiosk_id=KIOSK_ID,
        seq=1,
        created_at_ms=CREATED_AT_MS,
        card_uid="04A1B2C3",
        currency="EUR",
        items=(BarItem("Beer", 1, 550, sku="beer"),),
        total_cents=550,
        config_version=CONFIG_VERSION_MAX,
    )
    assert b'"config_version":9223372036854775807' in _payload(encode_request(built, KIOSK_KEY))


@pytest.mark.parametrize("value", [0, -1, CONFIG_VERSION_MAX + 1, True, 1.0, "3", None, [3]])
def test_config_version_is_an_integer_of_at_least_one(value: object) -> None:
    for document in (bar_order_document(), recharge_document()):
        with pytest.raises(ProtocolError) as caught:
            parse_request({**document, "config_version": value}, currency=CURRENCY)
        assert caught.value.code is ErrorCode.INVALID_REQUEST
        assert "config_version" in caught.value.message
    with pytest.raises(ProtocolError, match="config_version"):
        CheckpointRecharge(
            request_id="r-1",
            kiosk_id=KIOSK_ID,
            seq=1,
            created_at_ms=CREATED_AT_MS,
            card_uid="04A1B2C3",
            currency="EUR",
            amount_cents=100,
            payment_method="cash",
            staff_id="anna",
            config_version=0 if value is None else value,  # type: ignore[arg-type]
        )


def test_config_version_is_checked_after_currency_before_the_body() -> None:
    document = bar_order_document(config_version=0, total_cents=1, currency="USD")
    with pytest.raises(ProtocolError, match="currency"):
        parse_request(document, currency=CURRENCY)
    with pytest.raises(ProtocolError, match="config_version"):
        parse_request({**document, "currency": CURRENCY}, currency=CURRENCY)


# --- topics -----------------------------------------------------------------------------------


def test_the_config_and_denylist_topics() -> None:
    assert config_topic("festival", "bar-01") == "festival/v1/kiosks/bar-01/config"
    assert parse_topic("festival/v1/kiosks/bar-01/config", "festival").kind == "config"
    assert denylist_topic("festival") == "festival/v1/denylist"
    assert denylist_topic("acme/summer") == "acme/summer/v1/denylist"
    with pytest.raises(ValueError):
        denylist_topic("festival/#")
    with pytest.raises(ProtocolError):
        parse_topic("festival/v1/denylist", "festival")  # no kiosk's topic


def _accepted(cards: list[object]) -> bool:
    try:
        parse_denylist(denylist_document(card_uids=cards))
    except ProtocolError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.from_regex(r"\A(?:[0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})\Z"),
            st.text(alphabet="0123456789ABCDEFa,\n ", max_size=22),
            st.integers(),
        ),
        max_size=12,
    )
)
def test_the_one_pass_card_check_agrees_with_the_card_by_card_rule(cards: list[object]) -> None:
    """The fast path of a deny-list's check accepts exactly what the card-by-card rule does."""
    valid = all(type(card) is str and CARD_UID_PATTERN.match(card) for card in cards)
    ordered = valid and all(a < b for a, b in itertools.pairwise(cards))  # type: ignore[operator]
    assert _accepted(cards) == ordered, cards
    if valid:
        assert _accepted(sorted(set(cards))), cards  # type: ignore[type-var]
