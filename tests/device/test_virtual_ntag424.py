"""The virtual NTAG 424 DNA's pure behaviour: ``answer(apdu)`` driven directly, no pcscd."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.wristbands import authenticate
from device.virtual_card import answer_apdu
from device.virtual_ntag424 import FACTORY_CC, VirtualNtag424
from protocol.ntag424 import (
    ACCESS_FREE,
    CC_FILE_ID,
    NDEF_FILE_ID,
    AccessRights,
    CommMode,
    FileSettings,
    Ins,
    SdmSettings,
    SecureChannel,
    crc32_nxp,
    native_apdu,
    ndef_template,
    parse_change_file_settings,
    read_binary_apdu,
    read_ndef_url,
    select_application_apdu,
    select_file_apdu,
    u24,
)
from protocol.sun import CardKeyDerivation, SunVerifier, aes_cbc_decrypt, sun_from_url

h = bytes.fromhex
UID = "04A1B2C3D4E5F6"
MASTER = bytes(range(16))


def counting_random() -> object:
    counter = itertools.count(1)
    return lambda n: bytes((next(counter) & 0xFF,)) * n


@pytest.fixture
def tag() -> VirtualNtag424:
    return VirtualNtag424(h(UID))


def selected(tag: VirtualNtag424) -> VirtualNtag424:
    assert tag.answer(select_application_apdu()) == h("9000")
    return tag


def session(tag: VirtualNtag424, key_no: int = 0, key: bytes = bytes(16)) -> SecureChannel:
    channel = authenticate(tag.answer, key_no, key)
    assert channel is not None
    return channel


def test_get_uid_and_get_version(tag: VirtualNtag424) -> None:
    assert tag.answer(h("FFCA000000")) == h(UID + "9000")
    first = tag.answer(h("9060000000"))
    assert first == h("04040230001105" + "91AF")
    assert tag.answer(h("90AF000000"))[-2:] == h("91AF")
    last = tag.answer(h("90AF000000"))
    assert last[:7] == h(UID) and last[-2:] == h("9100")
    assert tag.answer(h("90AF000000")) == h("91CA")  # no frame pending


def test_iso_select_and_read_of_the_factory_files(tag: VirtualNtag424) -> None:
    assert tag.answer(read_binary_apdu(0, 0)) == h("6A82")  # nothing selected
    assert tag.answer(select_file_apdu(NDEF_FILE_ID)) == h("6A82")  # no application yet
    assert tag.answer(h("00A4040C07D2760000850102")) == h("6A82")  # another application
    selected(tag)
    assert tag.answer(select_file_apdu(h("E105"))) == h("6A82")
    assert tag.answer(select_file_apdu(CC_FILE_ID)) == h("9000")
    assert tag.answer(read_binary_apdu(0, 15)) == FACTORY_CC[:15] + h("9000")
    assert tag.answer(select_file_apdu(NDEF_FILE_ID)) == h("9000")
    assert tag.answer(read_binary_apdu(0, 0)) == bytes(256) + h("9000")
    assert tag.answer(read_binary_apdu(250, 0)) == bytes(6) + h("9000")
    assert tag.answer(h("00B0010000")) == h("6B00")  # offset 256: beyond the file
    assert tag.answer(h("00B00000")) == h("6700")
    assert tag.answer(h("00D0000000")) == h("6D00")
    assert tag.answer(h("80B0000000")) == h("6E00")


def test_authentication_with_the_factory_key_and_a_wrong_one(tag: VirtualNtag424) -> None:
    selected(tag)
    channel = session(tag)
    assert tag.session is not None and tag.session.ti == channel.ti
    assert tag.session.enc_key == channel.enc_key
    assert authenticate(tag.answer, 0, b"\x01" * 16) is None
    assert tag.session is None  # a failed authentication leaves none
    assert tag.answer(native_apdu(Ins.AUTHENTICATE_EV2_FIRST, h("0500"))) == h("9140")
    assert tag.answer(native_apdu(Ins.AUTHENTICATE_EV2_FIRST, h("00"))) == h("917E")
    assert tag.answer(native_apdu(Ins.ADDITIONAL_FRAME, bytes(31))) == h("91CA")


def test_native_commands_need_the_application_and_valid_framing(tag: VirtualNtag424) -> None:
    assert tag.answer(native_apdu(Ins.GET_CARD_UID)) == h("919D")
    selected(tag)
    assert tag.answer(native_apdu(Ins.GET_CARD_UID)) == h("919D")  # not authenticated
    assert tag.answer(h("9051010000")) == h("919E")
    assert tag.answer(h("90510000030102")) == h("917E")  # Lc says 3, 2 bytes follow
    assert tag.answer(native_apdu(0x6A)) == h("911C")


def test_get_card_uid_full_mode(tag: VirtualNtag424) -> None:
    selected(tag)
    channel = session(tag)
    response = tag.answer(channel.wrap(Ins.GET_CARD_UID, CommMode.FULL))
    assert channel.unwrap(response, CommMode.FULL) == h(UID)
    assert channel.counter == tag.session.counter == 1  # type: ignore[union-attr]


def test_a_command_with_a_wrong_mac_is_an_integrity_error_and_ends_the_session(
    tag: VirtualNtag424,
) -> None:
    selected(tag)
    channel = session(tag)
    apdu = bytearray(channel.wrap(Ins.GET_CARD_UID, CommMode.FULL))
    apdu[-2] ^= 0x01
    assert tag.answer(bytes(apdu)) == h("911E")
    assert tag.session is None
    assert tag.answer(channel.wrap(Ins.GET_CARD_UID, CommMode.FULL)) == h("919D")


def test_a_replayed_command_does_not_verify(tag: VirtualNtag424) -> None:
    """CmdCtr moves on: the same MACed command a second time fails."""
    selected(tag)
    channel = session(tag)
    apdu = channel.wrap(Ins.GET_CARD_UID, CommMode.FULL)
    channel.unwrap(tag.answer(apdu), CommMode.FULL)
    assert tag.answer(apdu) == h("911E")


# --- NXP's worked examples (AN12196), the reader (cloud.wristbands) against the virtual tag ---
# Both ends get the AN's random numbers (the reader RndA, the tag RndB and TI); every command
# and every answer must then be the AN's, byte for byte. The RndB is the one the AN's first
# answer encrypts under the all-zero key.


def _recording(tag: VirtualNtag424) -> tuple[list[tuple[str, str]], Callable[[bytes], bytes]]:
    exchanged: list[tuple[str, str]] = []

    def transmit(apdu: bytes) -> bytes:
        response = tag.answer(apdu)
        exchanged.append((apdu.hex().upper(), response.hex().upper()))
        return response

    return exchanged, transmit


def _feeding(*chunks: str) -> Callable[[int], bytes]:
    queue = [h(chunk) for chunk in chunks]

    def random_bytes(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n
        return chunk

    return random_bytes


def test_an12196_key_0_session_replayed_byte_for_byte() -> None:
    """§6.6 AuthenticateEV2First with key 00 (RndA 13C5DB8A…, RndB B9E2FC78…, TI 9D00C4DF),
    then in that session §5.4's WriteData of 128 bytes to the NDEF file (CommMode.FULL, CmdCtr 0)
    and the ChangeFileSettings example (CmdCtr 1, MACt D799B7C1A0EF7A04)."""
    tag = VirtualNtag424(
        h("04958CAA5C5E80"), random_bytes=_feeding("B9E2FC789B64BF237CCCAA20EC7E6E48", "9D00C4DF")
    )
    # The AN's NDEF file is written in CommMode.FULL with key 0 (the factory file is free).
    tag.files[2].settings = FileSettings(CommMode.FULL, AccessRights(ACCESS_FREE, 0, 0, 0))
    exchanged, transmit = _recording(tag)
    selected(tag)
    channel = authenticate(transmit, 0, bytes(16), _feeding("13C5DB8A5930439FC3DEF9A4C675360F"))
    assert channel is not None
    assert (channel.enc_key, channel.mac_key) == (
        h("1309C877509E5A215007FF0ED19CA564"),
        h("4C6626F5E72EA694202139295C7A7FC7"),
    )
    ndef = h(
        "0051D1014D550463686F6F73652E75726C2E636F6D2F6E7461673432343F653D"
        "3030303030303030303030303030303030303030303030303030303030303030"
        "26633D3030303030303030303030303030303000"
    )
    ndef += bytes(128 - len(ndef))
    channel.unwrap(
        transmit(channel.wrap(Ins.WRITE_DATA, CommMode.FULL, h("02000000800000"), ndef)),
        CommMode.MAC,
    )
    cfs = h("4000E0C1F121200000430000430000")
    channel.unwrap(
        transmit(channel.wrap(Ins.CHANGE_FILE_SETTINGS, CommMode.FULL, h("02"), cfs)),
        CommMode.MAC,
    )
    assert exchanged == [
        ("9071000002000000", "A04C124213C186F22399D33AC2A3021591AF"),
        (
            "90AF00002035C3E05A752E0144BAC0DE51C1F22C56B34408A23D8AEA266CAB947EA8E0118D00",
            "3FA64DB5446D1F34CD6EA311167F5E4985B89690C04A05F17FA7AB2F081206639100",
        ),
        (
            "908D00009F02000000800000421C73A27D827658AF481FDFF20A5025B559D0E3"
            "AA21E58D347F343CFFC768BFE596C706BC00F2176781D4B0242642A0FF5A42C4"
            "61AAF894D9A1284B8C76BCFA658ACD40555D362E08DB15CF421B51283F9064BC"
            "BE20E96CAE545B407C9D651A3315B27373772E5DA2367D2064AE054AF996C6F1"
            "F669170FA88CE8C4E3A4A7BBBEF0FD971FF532C3A802AF745660F2B4D1D9A849"
            "9661EBF300",
            "FC222E5F7A5424529100",
        ),
        (
            "905F0000190261B6D97903566E84C3AE5274467E89EAD799B7C1A0EF7A0400",
            "57BFF87B1241E93D9100",
        ),
    ]
    assert bytes(tag.files[2].data[:128]) == ndef
    assert tag.files[2].settings == parse_change_file_settings(cfs, 256)


def test_an12196_key_3_session_replayed_byte_for_byte() -> None:
    """§6.10 AuthenticateEV2First with key 03 (TI 7614281A), then §6.12's WriteData of 01…0A to
    the proprietary file 03 (CommMode.FULL, write key 3) and its MACed answer."""
    rnd_b = aes_cbc_decrypt(bytes(16), bytes(16), h("B875CEB0E66A6C5CD00898DC371F92D1"))
    tag = VirtualNtag424(h(UID), random_bytes=_feeding(rnd_b.hex(), "7614281A"))
    exchanged, transmit = _recording(tag)
    selected(tag)
    channel = authenticate(transmit, 3, bytes(16), _feeding("B98F4C50CF1C2E084FD150E33992B048"))
    assert channel is not None
    data = bytes(range(1, 11))
    channel.unwrap(
        transmit(channel.wrap(Ins.WRITE_DATA, CommMode.FULL, h("03000000" + "0A0000"), data)),
        CommMode.MAC,
    )
    assert exchanged == [
        ("9071000002030000", "B875CEB0E66A6C5CD00898DC371F92D191AF"),
        (
            "90AF000020FF0306E47DFBC50087C4D8A78E88E62DE1E8BE457AA477C707E2F0874916A8B100",
            "0CC9A8094A8EEA683ECAAC5C7BF20584206D0608D477110FC6B3D5D3F65C3A6A9100",
        ),
        (
            "908D00001F030000000A00006B5E6804909962FC4E3FF5522CF0F8436C0C53315B9C73AA00",
            "C26D236E4A7C046D9100",
        ),
    ]
    assert bytes(tag.files[3].data[:10]) == data


def test_an12196_change_key_examples_on_the_tag(tag: VirtualNtag424) -> None:
    """The tag side of ChangeKey Case 1 (§5.16.1: key 2 at CmdCtr 2, answer MACed
    203BB55D1089D587) and Case 2 (§5.16.2: key 0 at CmdCtr 3, answer 91 00 and the session
    ends), fed the AN's command APDUs in the AN's session (its keys given, TI 7614281A)."""
    selected(tag)
    tag.session = SecureChannel(
        h("4CF3CB41A22583A61E89B158D252FC53"),
        h("5529860B2FC5FB6154B7F28361D30BF9"),
        h("7614281A"),
        counter=2,
    )
    case_1 = h(
        "90C4000029022CF362B7BF4311FF3BE1DAA295E8C68DE09050560D19B9E16C2393AE9CD1FAC7"
        "5D0CE20BCD1D06E600"
    )
    assert tag.answer(case_1) == h("203BB55D1089D587" + "9100")
    assert (tag.keys[2], tag.key_versions[2]) == (h("F3847D627727ED3BC9C4CC050489B966"), 1)
    case_2 = h(
        "90C400002900C0EB4DEEFEDDF0B513A03A95A75491818580503190D4D05053FF75668A01D6FD"
        "A6610234BDED643200"
    )
    assert tag.answer(case_2) == h("9100")
    assert (tag.keys[0], tag.key_versions[0]) == (h("5004BF991F408672B1EF00F08F9E8647"), 1)
    assert tag.session is None


def _sdm_settings(portal: str = "https://pay.example") -> tuple[bytes, FileSettings]:
    template = ndef_template(portal)
    settings = FileSettings(
        CommMode.PLAIN,
        AccessRights(read=ACCESS_FREE, write=0, read_write=0, change=0),
        SdmSettings(1, 2, template.picc_data_offset, template.mac_offset, template.mac_offset),
    )
    return template.file_bytes, settings


def _provision_by_hand(tag: VirtualNtag424, limit: int | None = None) -> None:
    """Write the template, SDM on, keys 1 and 2 to ours: the commands one by one."""
    file_bytes, settings = _sdm_settings()
    if limit is not None:
        sdm = settings.sdm
        assert sdm is not None
        settings = FileSettings(
            settings.comm_mode,
            settings.access,
            SdmSettings(
                1, 2, sdm.picc_data_offset, sdm.mac_input_offset, sdm.mac_offset,
                read_counter_limit=limit,
            ),
        )  # fmt: skip
    selected(tag)
    channel = session(tag)
    header = h("02") + u24(0) + u24(len(file_bytes))
    response = tag.answer(channel.wrap(Ins.WRITE_DATA, CommMode.PLAIN, header, file_bytes))
    channel.unwrap(response, CommMode.PLAIN)
    apdu = channel.wrap(Ins.CHANGE_FILE_SETTINGS, CommMode.FULL, h("02"), settings.change_bytes())
    channel.unwrap(tag.answer(apdu), CommMode.MAC)
    keys = CardKeyDerivation(MASTER).card_keys(UID)
    for key_no, key in ((1, keys.meta), (2, keys.file)):
        data = key + b"\x01" + crc32_nxp(key)  # XOR with the factory key (zeros) is the key
        apdu = channel.wrap(Ins.CHANGE_KEY, CommMode.FULL, bytes((key_no,)), data)
        channel.unwrap(tag.answer(apdu), CommMode.MAC)
    apdu = channel.wrap(Ins.CHANGE_KEY, CommMode.FULL, h("00"), keys.app + b"\x01")
    assert tag.answer(apdu) == h("9100")
    assert tag.session is None
    assert tag.keys[:3] == [keys.app, keys.meta, keys.file]
    assert tag.key_versions[:3] == [1, 1, 1]
    tag.reset()


def test_sdm_mirrors_a_verifiable_message_and_counts_reads(tag: VirtualNtag424) -> None:
    _provision_by_hand(tag)
    verifier = SunVerifier(MASTER)
    counters = []
    for _ in range(3):
        message = sun_from_url(read_ndef_url(tag.answer))
        assert message is not None
        counters.append(verifier.verify(UID, message.picc_data, message.cmac).counter)
        tag.reset()
    assert counters == [1, 2, 3]


def test_one_selection_is_one_read_however_many_chunks(tag: VirtualNtag424) -> None:
    _provision_by_hand(tag)
    selected(tag)
    assert tag.answer(select_file_apdu(NDEF_FILE_ID)) == h("9000")
    first = tag.answer(read_binary_apdu(0, 64))[:-2]
    rest = tag.answer(read_binary_apdu(64, 0))[:-2]
    assert tag.sdm_read_counter == 1
    assert tag.answer(select_file_apdu(NDEF_FILE_ID)) == h("9000")
    tag.answer(read_binary_apdu(0, 2))
    assert tag.sdm_read_counter == 2
    from protocol.ntag424 import parse_ndef_uri

    message = sun_from_url(parse_ndef_uri(first + rest))
    assert message is not None
    assert SunVerifier(MASTER).verify(UID, message.picc_data, message.cmac).counter == 1


def test_the_read_counter_limit(tag: VirtualNtag424) -> None:
    _provision_by_hand(tag, limit=2)
    for _ in range(2):
        assert sun_from_url(read_ndef_url(tag.answer)) is not None
    selected(tag)
    tag.answer(select_file_apdu(NDEF_FILE_ID))
    assert tag.answer(read_binary_apdu(0, 0)) == h("6982")


def test_after_programming_the_factory_key_is_refused_and_writes_need_key_0(
    tag: VirtualNtag424,
) -> None:
    _provision_by_hand(tag)
    selected(tag)
    assert authenticate(tag.answer, 0, bytes(16)) is None
    header = h("02") + u24(0) + u24(4)
    assert tag.answer(native_apdu(Ins.WRITE_DATA, header + b"evil")) == h("919D")
    app_key = CardKeyDerivation(MASTER).app_key(UID)
    channel = session(tag, 0, app_key)
    apdu = channel.wrap(Ins.CHANGE_KEY, CommMode.FULL, h("01"), bytes(16) + b"\x00" + bytes(4))
    assert tag.answer(apdu) == h("911E")  # wrong CRC: integrity error


def test_get_file_settings_plain_and_maced(tag: VirtualNtag424) -> None:
    selected(tag)
    assert tag.answer(native_apdu(Ins.GET_FILE_SETTINGS, h("02"))) == h("0000E0EE000100" + "9100")
    assert tag.answer(native_apdu(Ins.GET_FILE_SETTINGS, h("09"))) == h("91F0")
    _provision_by_hand(tag)
    selected(tag)
    channel = session(tag, 0, CardKeyDerivation(MASTER).app_key(UID))
    response = tag.answer(channel.wrap(Ins.GET_FILE_SETTINGS, CommMode.MAC, h("02")))
    data = channel.unwrap(response, CommMode.MAC)
    _, settings = _sdm_settings()
    change = settings.change_bytes()
    assert data == h("00") + change[:3] + u24(256) + change[3:]


def test_change_file_settings_refusals(tag: VirtualNtag424) -> None:
    selected(tag)
    _, settings = _sdm_settings()
    assert tag.answer(native_apdu(Ins.CHANGE_FILE_SETTINGS, h("02") + bytes(16))) == h("919D")
    channel = session(tag)
    # SDM on the CC file: a parameter error, which also ends the session
    apdu = channel.wrap(Ins.CHANGE_FILE_SETTINGS, CommMode.FULL, h("01"), settings.change_bytes())
    assert tag.answer(apdu) == h("919E")
    assert tag.session is None
    channel = session(tag)
    apdu = channel.wrap(Ins.CHANGE_FILE_SETTINGS, CommMode.FULL, h("07"), settings.change_bytes())
    assert tag.answer(apdu) == h("91F0")


def test_write_data_boundaries(tag: VirtualNtag424) -> None:
    selected(tag)
    assert tag.answer(native_apdu(Ins.WRITE_DATA, h("02") + u24(250) + u24(8) + bytes(8))) == (
        h("91BE")
    )
    assert tag.answer(native_apdu(Ins.WRITE_DATA, h("02") + u24(0) + u24(8) + bytes(4))) == h(
        "917E"
    )
    assert tag.answer(native_apdu(Ins.WRITE_DATA, h("020000"))) == h("917E")
    assert tag.answer(native_apdu(Ins.WRITE_DATA, h("02") + u24(0) + u24(2) + b"hi")) == h("9100")
    tag.answer(select_file_apdu(NDEF_FILE_ID))
    assert tag.answer(read_binary_apdu(0, 2)) == b"hi" + h("9000")


def test_removal_ends_the_session_but_keeps_the_band(tag: VirtualNtag424) -> None:
    _provision_by_hand(tag)
    selected(tag)
    session(tag, 0, CardKeyDerivation(MASTER).app_key(UID))
    tag.reset()
    assert tag.session is None and not tag.app_selected
    assert tag.keys[0] == CardKeyDerivation(MASTER).app_key(UID)


def test_the_plain_card_knows_no_ntag_command() -> None:
    assert answer_apdu(h(UID), h("9060000000")) == h("6D00")
    assert answer_apdu(h(UID), select_application_apdu()) == h("6D00")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=8))
def test_any_apdus_get_a_status_word_never_an_exception(apdus: list[bytes]) -> None:
    """Bad input is a status word: random APDUs (and random native frames) after a select and
    inside a session never raise, and every answer ends in two status bytes."""
    tag = VirtualNtag424(h(UID))
    selected(tag)
    session(tag)
    for apdu in apdus:
        for candidate in (apdu, b"\x90" + apdu[1:2] + b"\x00\x00" + apdu[2:]):
            response = tag.answer(candidate)
            assert len(response) >= 2
