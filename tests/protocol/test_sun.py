"""protocol/sun.py: SUN messages by NXP's numbers (AN12196) and by our key derivation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.sun import (
    CardKeyDerivation,
    SunError,
    SunFailure,
    SunVerifier,
    _FixedKeyCmac,
    aes_cbc_decrypt,
    aes_cmac,
    iso_pad,
    iso_unpad,
    parse_master_key,
    sdm_mac,
    sun_from_url,
    sun_message,
)

ZERO_KEY = bytes(16)
MASTER = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
UID = "04A1B2C3D4E5F6"
OTHER_UID = "04FFEEDDCCBBAA"

# PROTOCOL.md's example, from AN12196 §3.4.2 (all keys zero).
AN12196_PICC_DATA = "EF963FF7828658A599F3041510671E88"
AN12196_CMAC = "94EED9EE65337086"
AN12196_UID = "04DE5F1EACC040"
AN12196_COUNTER = 61


def test_an12196_sun_example_decrypts_and_verifies() -> None:
    plain = aes_cbc_decrypt(ZERO_KEY, bytes(16), bytes.fromhex(AN12196_PICC_DATA))
    assert plain[0] == 0xC7
    uid, counter = plain[1:8], int.from_bytes(plain[8:11], "little")
    assert uid.hex().upper() == AN12196_UID
    assert counter == AN12196_COUNTER
    assert sdm_mac(ZERO_KEY, uid, counter).hex().upper() == AN12196_CMAC


def test_an12196_picc_data_is_what_the_tag_side_produces() -> None:
    plain = aes_cbc_decrypt(ZERO_KEY, bytes(16), bytes.fromhex(AN12196_PICC_DATA))
    message = sun_message(
        ZERO_KEY, ZERO_KEY, bytes.fromhex(AN12196_UID), AN12196_COUNTER, padding=plain[11:]
    )
    assert (message.picc_data, message.cmac) == (AN12196_PICC_DATA, AN12196_CMAC)


@pytest.mark.parametrize(
    ("message", "tag"),
    [  # RFC 4493 §4
        ("", "bb1d6929e95937287fa37d129b756746"),
        ("6bc1bee22e409f96e93d7e117393172a", "070a16b46b4d4144f79bdd9dd04a287c"),
    ],
)
def test_cmac_rfc4493_vectors_both_implementations(message: str, tag: str) -> None:
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    assert aes_cmac(key, bytes.fromhex(message)).hex() == tag
    assert _FixedKeyCmac(key).tag(bytes.fromhex(message)).hex() == tag


@pytest.mark.parametrize("length", [0, 1, 7, 8, 15, 16])
def test_fixed_key_cmac_equals_the_general_one(length: int) -> None:
    data = bytes(range(length))
    assert _FixedKeyCmac(MASTER).tag(data) == aes_cmac(MASTER, data)


def test_fixed_key_cmac_refuses_longer_messages() -> None:
    with pytest.raises(ValueError, match="one block"):
        _FixedKeyCmac(MASTER).tag(bytes(17))


def test_key_derivation_is_protocol_md() -> None:
    derive = CardKeyDerivation(MASTER)
    uid = bytes.fromhex(UID)
    assert derive.meta_key == aes_cmac(MASTER, b"\x01festival-sdm-meta")
    assert derive.file_key(UID) == aes_cmac(MASTER, b"\x02" + uid)
    assert derive.app_key(uid) == aes_cmac(MASTER, b"\x00" + uid)
    keys = derive.card_keys(UID)
    assert len({keys.app, keys.meta, keys.file}) == 3
    assert derive.file_key(OTHER_UID) != keys.file
    assert CardKeyDerivation(bytes(16)).meta_key != derive.meta_key


@pytest.mark.parametrize("uid", ["04A1B2C3D4E5", "04a1b2c3d4e5f6", "DEADBEEF", 1234])
def test_key_derivation_refuses_uids_it_cannot_carry(uid: object) -> None:
    with pytest.raises(ValueError):
        CardKeyDerivation(MASTER).file_key(uid)  # type: ignore[arg-type]


def _genuine(uid: str = UID, counter: int = 7, master: bytes = MASTER) -> tuple[str, str]:
    derive = CardKeyDerivation(master)
    message = sun_message(
        derive.meta_key, derive.file_key(uid), bytes.fromhex(uid), counter, b"\x11" * 5
    )
    return message.picc_data, message.cmac


def test_a_genuine_message_verifies_with_its_uid_and_counter() -> None:
    picc, cmac = _genuine(counter=123456)
    verified = SunVerifier(MASTER).verify(UID, picc, cmac)
    assert (verified.uid, verified.counter) == (UID, 123456)


def _reason(card_uid: object, picc: object, cmac: object) -> SunFailure:
    with pytest.raises(SunError) as caught:
        SunVerifier(MASTER).verify(card_uid, picc, cmac)  # type: ignore[arg-type]
    return caught.value.reason


def test_missing_message() -> None:
    picc, _ = _genuine()
    assert _reason(UID, None, None) is SunFailure.MISSING
    assert _reason(UID, picc, None) is SunFailure.MISSING


@pytest.mark.parametrize(
    ("picc", "cmac"),
    [
        ("EF963FF7828658A599F3041510671E8", "94EED9EE65337086"),  # 31 digits
        ("ef963ff7828658a599f3041510671e88", "94EED9EE65337086"),  # lower case
        ("EF963FF7828658A599F3041510671E88", "94EED9EE6533708"),
        ("EF963FF7828658A599F3041510671E88", "94EED9EE6533708G"),
        (12, "94EED9EE65337086"),
        ("EF963FF7828658A599F3041510671E88\n", "94EED9EE65337086"),
    ],
)
def test_malformed_message(picc: object, cmac: object) -> None:
    assert _reason(UID, picc, cmac) is SunFailure.MALFORMED


def test_a_uid_the_scheme_cannot_carry_is_malformed() -> None:
    picc, cmac = _genuine()
    assert _reason("DEADBEEF", picc, cmac) is SunFailure.MALFORMED


def test_another_deployments_wristband_is_not_ours() -> None:
    picc, cmac = _genuine(master=bytes(16))
    assert _reason(UID, picc, cmac) is SunFailure.NOT_OURS


def test_card_a_message_with_card_b_uid_is_wrong_uid() -> None:
    picc, cmac = _genuine(uid=UID)
    assert _reason(OTHER_UID, picc, cmac) is SunFailure.WRONG_UID


@pytest.mark.parametrize("bit", [0, 1, 7, 63])
def test_one_flipped_mac_bit_is_bad_mac(bit: int) -> None:
    picc, cmac = _genuine()
    flipped = (int(cmac, 16) ^ (1 << bit)).to_bytes(8, "big").hex().upper()
    assert _reason(UID, picc, flipped) is SunFailure.BAD_MAC


def test_a_mac_of_another_counter_is_bad_mac() -> None:
    picc, _ = _genuine(counter=8)
    _, cmac_of_7 = _genuine(counter=7)
    assert _reason(UID, picc, cmac_of_7) is SunFailure.BAD_MAC


def test_master_key_file_text() -> None:
    assert parse_master_key("00112233445566778899aabbccddeeff\n") == MASTER
    for bad in ("", "0011", "zz112233445566778899aabbccddeeff", "00" * 17):
        with pytest.raises(ValueError, match="32 hex digits") as caught:
            parse_master_key(bad)
        assert bad not in str(caught.value) or bad == ""


def test_iso_padding_round_trip_and_refusal() -> None:
    for length in (0, 1, 15, 16, 17):
        data = bytes(range(1, length + 1))
        padded = iso_pad(data)
        assert len(padded) % 16 == 0 and len(padded) > length
        assert iso_unpad(padded) == data
    with pytest.raises(ValueError):
        iso_unpad(bytes(16))


def test_sun_from_url() -> None:
    picc, cmac = _genuine()
    url = f"https://pay.example/t?picc_data={picc}&cmac={cmac}"
    message = sun_from_url(url)
    assert message is not None and (message.picc_data, message.cmac) == (picc, cmac)
    for bad in (
        "https://pay.example/t",
        f"https://pay.example/t?picc_data={picc}",
        f"https://pay.example/t?picc_data={picc}&cmac={cmac}&cmac={cmac}",
        f"https://pay.example/t?picc_data={picc.lower()}&cmac={cmac}",
        "https://pay.example/t?picc_data=" + "0" * 32 + "&cmac=" + "0" * 15,
        "https://pay.example/t?%%%",
    ):
        assert sun_from_url(bad) is None, bad


HEX = "0123456789ABCDEF"


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.text(max_size=40), st.text(HEX, min_size=32, max_size=32)),
    st.one_of(st.none(), st.text(max_size=20), st.text(HEX, min_size=16, max_size=16)),
    st.one_of(st.text(max_size=20), st.text(HEX, min_size=14, max_size=14)),
)
def test_any_input_is_a_categorised_failure_never_a_crash(
    picc: str | None, cmac: str | None, card_uid: str
) -> None:
    with pytest.raises(SunError) as caught:  # a random message verifying: 2^-64
        SunVerifier(MASTER).verify(card_uid, picc, cmac)
    assert caught.value.reason in SunFailure


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_url_gives_a_message_or_none(url: str) -> None:
    message = sun_from_url(url)
    assert message is None or (len(message.picc_data), len(message.cmac)) == (32, 16)
