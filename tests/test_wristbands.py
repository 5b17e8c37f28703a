"""Provisioning (cloud/wristbands.py) of virtual NTAG 424 DNA tags, in process: programmed like
`card program` does, then read like a kiosk and verified like the cloud."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud import cli
from cloud.keys import load_card_master_key, save_card_master_key
from cloud.wristbands import (
    ProvisioningError,
    ProvisioningFailure,
    program_wristband,
)
from device.virtual_card import answer_apdu
from device.virtual_ntag424 import VirtualNtag424
from protocol.ntag424 import (
    TagCommunicationError,
    ndef_template,
    parse_ndef_uri,
    read_ndef_url,
)
from protocol.sun import CardKeyDerivation, SunVerifier, sun_from_url

MASTER = bytes.fromhex("0F1E2D3C4B5A69788796A5B4C3D2E1F0")
PORTAL = "https://pay.festival.example"
UID = "04A1B2C3D4E5F6"


def kiosk_read(tag: VirtualNtag424) -> tuple[str, int]:
    tag.reset()  # a new tap
    message = sun_from_url(read_ndef_url(tag.answer))
    assert message is not None
    verified = SunVerifier(MASTER).verify(UID, message.picc_data, message.cmac)
    return verified.uid, verified.counter


def failure(transmit: Callable[[bytes], bytes], master: bytes = MASTER) -> ProvisioningError:
    with pytest.raises(ProvisioningError) as caught:
        program_wristband(transmit, master, PORTAL)
    return caught.value


def test_a_factory_fresh_tag_is_programmed_and_reads_as_genuine() -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))
    done = program_wristband(tag.answer, MASTER, PORTAL)
    assert (done.uid, done.counter, done.already_programmed) == (UID, 1, False)
    keys = CardKeyDerivation(MASTER).card_keys(UID)
    assert tag.keys[:3] == [keys.app, keys.meta, keys.file]
    assert kiosk_read(tag) == (UID, 2)
    assert kiosk_read(tag) == (UID, 3)
    tag.reset()
    tag.answer(bytes.fromhex("00A4040C07D2760000850101"))
    tag.answer(bytes.fromhex("00A4000C02E104"))
    url = parse_ndef_uri(tag.answer(bytes.fromhex("00B0000000"))[:-2])
    assert url.startswith(f"{PORTAL}/t?picc_data=") and "&cmac=" in url


def test_programming_costs_a_bounded_number_of_apdus() -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))
    program_wristband(tag.answer, MASTER, PORTAL)
    # GetVersion 3, select 1, authenticate 2, GetCardUID 1, WriteData 1, ChangeFileSettings 1,
    # ChangeKey 3, read back 3.
    assert len(tag.commands_seen) == 15


def test_a_tag_programmed_by_us_is_recognised_and_verified_again() -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))
    program_wristband(tag.answer, MASTER, PORTAL)
    tag.reset()
    again = program_wristband(tag.answer, MASTER, PORTAL)
    assert (again.uid, again.already_programmed, again.counter) == (UID, True, 2)


def test_a_tag_with_other_keys_is_left_as_it_is() -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))
    program_wristband(tag.answer, bytes(16), PORTAL)  # another deployment's master key
    before = list(tag.keys)
    tag.reset()
    error = failure(tag.answer)
    assert error.kind is ProvisioningFailure.FOREIGN_KEYS
    assert "other keys" in error.message
    assert tag.keys == before


def test_a_uid_only_card_is_not_an_ntag424() -> None:
    error = failure(lambda apdu: answer_apdu(bytes.fromhex(UID), apdu))
    assert error.kind is ProvisioningFailure.NOT_NTAG424
    assert "6D00" in error.message


def test_another_desfire_family_chip_is_not_an_ntag424() -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))

    def desfire(apdu: bytes) -> bytes:
        response = tag.answer(apdu)
        if apdu[1] == 0x60:  # a DESFire EV3's hardware version
            return bytes.fromhex("04010133001A05") + response[-2:]
        return response

    error = failure(desfire)
    assert error.kind is ProvisioningFailure.NOT_NTAG424
    assert "04010133001A05" in error.message


class Removed:
    """A transport whose tag leaves after ``after`` APDUs."""

    def __init__(self, tag: VirtualNtag424, after: int) -> None:
        self.tag = tag
        self.left = after

    def __call__(self, apdu: bytes) -> bytes:
        if self.left == 0:
            raise TagCommunicationError("card removed")
        self.left -= 1
        return self.tag.answer(apdu)


@pytest.mark.parametrize("after", range(15))
def test_a_tag_removed_midway_is_reported_and_can_be_presented_again(after: int) -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))
    error = failure(Removed(tag, after))
    assert error.kind is ProvisioningFailure.REMOVED
    assert "present it again" in error.message
    tag.reset()
    done = program_wristband(tag.answer, MASTER, PORTAL)
    assert done.uid == UID
    assert kiosk_read(tag)[0] == UID


def test_a_tag_that_mirrors_a_wrong_mac_fails_the_read_back() -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))

    def tampering(apdu: bytes) -> bytes:
        response = tag.answer(apdu)
        if apdu[:2] == b"\x00\xb0" and response[-2:] == b"\x90\x00":
            text = bytearray(response)
            at = text.index(b"&cmac=") + len(b"&cmac=")
            text[at] = ord("0") if text[at] != ord("0") else ord("1")
            return bytes(text)
        return response

    error = failure(tampering)
    assert error.kind is ProvisioningFailure.VERIFY_FAILED
    assert "bad_mac" in error.message


def test_an_answer_with_a_broken_mac_is_a_tag_error() -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))

    def breaking(apdu: bytes) -> bytes:
        response = tag.answer(apdu)
        if apdu[1] == 0x51:  # GetCardUID's answer
            return bytes((response[0] ^ 1,)) + response[1:]
        return response

    error = failure(breaking)
    assert error.kind is ProvisioningFailure.TAG_ERROR
    assert "does not verify" in error.message


def test_a_portal_url_too_long_for_the_tag() -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))
    with pytest.raises(ProvisioningError) as caught:
        program_wristband(tag.answer, MASTER, "https://" + "x" * 220 + ".example")
    assert caught.value.kind is ProvisioningFailure.BAD_TEMPLATE
    assert tag.commands_seen == []


def test_a_long_portal_url_is_written_in_chunks() -> None:
    tag = VirtualNtag424(bytes.fromhex(UID))
    portal = "https://" + "p" * 150 + ".example"
    program_wristband(tag.answer, MASTER, portal)
    writes = [apdu for apdu in tag.commands_seen if apdu[1] == 0x8D]
    assert len(writes) == 2
    tag.reset()
    assert read_ndef_url(tag.answer).startswith(portal + "/t?picc_data=")


# --- the CLI verbs -------------------------------------------------------------------------


def test_master_keygen_writes_a_0600_key_file_and_never_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CARD_MASTER_KEY_FILE", raising=False)
    path = tmp_path / "master.key"
    assert cli.main(["card", "master-keygen", "--out", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 33 and text.endswith("\n")
    key = load_card_master_key(path)
    assert key.hex().upper() == text.strip()
    assert text.strip() not in capsys.readouterr().out  # the key is never printed
    assert cli.main(["card", "master-keygen", "--out", str(path)]) == 1
    assert load_card_master_key(path) == key
    assert "not replaced" in capsys.readouterr().err


def test_a_master_key_file_others_can_read_or_that_holds_no_key_is_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "master.key"
    save_card_master_key(MASTER, path)
    path.chmod(0o644)
    with pytest.raises(ValueError, match="0600"):
        load_card_master_key(path)
    secret = "ZZ" + "11" * 15
    path.write_text(secret + "\n")
    path.chmod(0o600)
    with pytest.raises(ValueError, match="32 hex digits") as caught:
        load_card_master_key(path)
    assert secret not in str(caught.value)
    path.write_text("0" * 100)
    with pytest.raises(ValueError, match="too long"):
        load_card_master_key(path)


def test_card_program_needs_the_master_key_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CARD_MASTER_KEY_FILE", raising=False)
    assert cli.main(["card", "program", "--reader", "Nothing"]) == 2
    assert "CARD_MASTER_KEY_FILE" in capsys.readouterr().err


def test_card_program_refuses_a_portal_url_the_tag_cannot_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    save_card_master_key(MASTER, tmp_path / "master.key")
    monkeypatch.setenv("CARD_MASTER_KEY_FILE", str(tmp_path / "master.key"))
    # FESTIVAL_PORTAL_URL's pattern admits only what the 256-byte NDEF file holds.
    longest = "http://" + "x" * 172 + ".example"
    assert len(ndef_template(longest).file_bytes) <= 256
    for bad in ("https://" + "x" * 173 + ".example", "ftp://pay.example", "https://a b"):
        monkeypatch.setenv("FESTIVAL_PORTAL_URL", bad)
        assert cli.main(["card", "program", "--reader", "Nothing"]) == 2
        assert "configuration error" in capsys.readouterr().err


def test_card_program_register_creates_the_card_and_gives_it_a_pin(database_url: str) -> None:
    """`card program --register` (issue 15 §2): each tag programmed is registered with the
    cloud through the PIN procedure, created with balance 0, its fresh PIN printed once and
    only its hash stored; a tag programmed again gets a new PIN and creates nothing."""
    from sqlalchemy import text

    from cloud.database import make_engine
    from cloud.ledger import Ledger
    from cloud.portal import check_pin
    from cloud.settings import CloudSettings
    from cloud.wristbands import handle_tag, pin_registrar

    register, close = pin_registrar(CloudSettings.model_construct(database_url=database_url))
    tag = VirtualNtag424(bytes.fromhex(UID))
    try:
        first = handle_tag(tag.answer, MASTER, PORTAL, register)
        tag.reset()
        again = handle_tag(tag.answer, MASTER, PORTAL, register)
    finally:
        close()
    assert first.failure is None and first.created and first.pin is not None
    assert first.line() == f"{UID}\tprogrammed\t{first.pin}"
    assert again.created is False and again.pin not in (None, first.pin)
    assert again.line().startswith(f"{UID}\talready programmed\t")
    engine = make_engine(database_url, pool_size=1)
    try:
        card = Ledger(engine).card(UID)
        assert card is not None and (card.balance_cents, card.status) == (0, "active")
        with engine.connect() as connection:
            stored = connection.execute(
                text("SELECT pin_hash FROM card_pins WHERE card_uid = :uid"), {"uid": UID}
            ).scalar_one()
    finally:
        engine.dispose()
    assert again.pin is not None and check_pin(again.pin, stored)
    assert not check_pin(first.pin, stored)
    assert again.pin not in stored


def test_card_program_without_register_registers_nothing() -> None:
    from cloud.wristbands import handle_tag

    tag = VirtualNtag424(bytes.fromhex(UID))
    handled = handle_tag(tag.answer, MASTER, PORTAL)
    assert (handled.failure, handled.pin, handled.created) == (None, None, False)
    assert handled.line() == f"{UID}\tprogrammed"
    registered: list[str] = []

    def register(uid: str) -> tuple[str, bool]:
        registered.append(uid)
        return "000000", True

    uid_only = handle_tag(
        lambda apdu: answer_apdu(bytes.fromhex(UID), apdu), MASTER, PORTAL, register
    )
    assert uid_only.programmed is None and uid_only.failure is not None
    assert "6D00" in uid_only.failure and registered == []  # a failed tag registers nothing
