"""protocol/ntag424.py against NXP's worked examples (AN12196), and its own encodings.

The section numbers are AN12196 Rev. 2's; the hex strings are the APDUs, keys and MACs printed
there."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.ntag424 import (
    ACCESS_FREE,
    AccessRights,
    CommMode,
    FileSettings,
    NativeStatusError,
    SdmSettings,
    SecureChannel,
    SecureMessagingError,
    TagReadError,
    crc32_nxp,
    ndef_template,
    ndef_uri_file,
    parse_change_file_settings,
    parse_ndef_uri,
    read_ndef_url,
    rotate_left,
    session_keys,
    sun_url_template,
)
from protocol.sun import aes_cbc_decrypt, aes_cbc_encrypt

ZERO = bytes(16)
h = bytes.fromhex


@pytest.mark.parametrize(
    ("rnd_a", "rnd_b_enc", "part2", "answer", "ti", "enc", "mac"),
    [
        (  # §6.6: AuthenticateEV2First with key 0x00
            "13C5DB8A5930439FC3DEF9A4C675360F",
            "A04C124213C186F22399D33AC2A30215",
            "35C3E05A752E0144BAC0DE51C1F22C56B34408A23D8AEA266CAB947EA8E0118D",
            "3FA64DB5446D1F34CD6EA311167F5E4985B89690C04A05F17FA7AB2F08120663",
            "9D00C4DF",
            "1309C877509E5A215007FF0ED19CA564",
            "4C6626F5E72EA694202139295C7A7FC7",
        ),
        (  # §6.10: the same with key 0x03
            "B98F4C50CF1C2E084FD150E33992B048",
            "B875CEB0E66A6C5CD00898DC371F92D1",
            "FF0306E47DFBC50087C4D8A78E88E62DE1E8BE457AA477C707E2F0874916A8B1",
            "0CC9A8094A8EEA683ECAAC5C7BF20584206D0608D477110FC6B3D5D3F65C3A6A",
            "7614281A",
            "7A93D6571E4B180FCA6AC90C9A7488D4",
            "FC4AF159B62E549B5812394CAB1918CC",
        ),
    ],
)
def test_authenticate_ev2_first_examples(
    rnd_a: str, rnd_b_enc: str, part2: str, answer: str, ti: str, enc: str, mac: str
) -> None:
    rnd_b = aes_cbc_decrypt(ZERO, ZERO, h(rnd_b_enc))
    assert aes_cbc_encrypt(ZERO, ZERO, h(rnd_a) + rotate_left(rnd_b)) == h(part2)
    plain = aes_cbc_decrypt(ZERO, ZERO, h(answer))
    assert plain[:4] == h(ti)
    assert plain[4:20] == rotate_left(h(rnd_a))
    assert session_keys(ZERO, h(rnd_a), rnd_b) == (h(enc), h(mac))


def test_mac_mode_get_file_settings_example() -> None:
    """§5.3: GetFileSettings in CommMode.MAC, command and response."""
    channel = SecureChannel(ZERO, h("8248134A386E86EB7FAF54A52E536CB6"), h("7A21085E"))
    assert channel.wrap(0xF5, CommMode.MAC, b"\x02") == h("90F5000009026597A457C8CD442C00")
    data = channel.unwrap(
        h("0040EEEE000100D1FE001F00004400004400002000006A00002A474282E7A47986" + "9100"),
        CommMode.MAC,
    )
    assert data == h("0040EEEE000100D1FE001F00004400004400002000006A0000")
    assert channel.counter == 1


def test_full_mode_write_data_example_128_bytes() -> None:
    """§5.4: WriteData of an NDEF file in CommMode.FULL (128 bytes, padded to 144)."""
    channel = SecureChannel(
        h("1309C877509E5A215007FF0ED19CA564"), h("4C6626F5E72EA694202139295C7A7FC7"), h("9D00C4DF")
    )
    plain_apdu = h(
        "908D000087020000008000000051D1014D550463686F6F73652E75726C2E636F"
        "6D2F6E7461673432343F653D3030303030303030303030303030303030303030"
        "30303030303030303030303026633D3030303030303030303030303030303000" + "00" * 32 + "00" * 13
    )
    data = plain_apdu[12:-1]
    assert len(data) == 128
    apdu = channel.wrap(0x8D, CommMode.FULL, h("02000000800000"), data)
    assert apdu == h(
        "908D00009F02000000800000421C73A27D827658AF481FDFF20A5025B559D0E3"
        "AA21E58D347F343CFFC768BFE596C706BC00F2176781D4B0242642A0FF5A42C4"
        "61AAF894D9A1284B8C76BCFA658ACD40555D362E08DB15CF421B51283F9064BC"
        "BE20E96CAE545B407C9D651A3315B27373772E5DA2367D2064AE054AF996C6F1"
        "F669170FA88CE8C4E3A4A7BBBEF0FD971FF532C3A802AF745660F2B4D1D9A849"
        "9661EBF300"
    )
    assert channel.unwrap(h("FC222E5F7A542452" + "9100"), CommMode.MAC) == b""


def test_full_mode_write_data_example_10_bytes() -> None:
    """§6.12: WriteData of 10 bytes to file 03 in CommMode.FULL, then its MACed answer."""
    channel = SecureChannel(
        h("7A93D6571E4B180FCA6AC90C9A7488D4"), h("FC4AF159B62E549B5812394CAB1918CC"), h("7614281A")
    )
    apdu = channel.wrap(0x8D, CommMode.FULL, h("03000000" + "0A0000"), bytes(range(1, 11)))
    assert apdu == h("908D00001F030000000A00006B5E6804909962FC4E3FF5522CF0F8436C0C53315B9C73AA00")
    assert channel.unwrap(h("C26D236E4A7C046D" + "9100"), CommMode.MAC) == b""


def test_full_mode_get_card_uid_example() -> None:
    """§7.3: GetCardUID, the response data encrypted and MACed."""
    channel = SecureChannel(
        h("2B4D963C014DC36F24F69A50A394F875"), h("379D32130CE61705DD5FD8C36B95D764"), h("DF055522")
    )
    assert channel.wrap(0x51, CommMode.FULL) == h("90510000088E2C155ADDA99BE300")
    response = h("70756055688505B52A5E26E59E329CD6595F672298EA41B7" + "9100")
    assert channel.unwrap(response, CommMode.FULL) == h("04958CAA5C5E80")


# The ChangeFileSettings and ChangeKey examples (the table numbers differ between the AN's
# revisions: ChangeFileSettings is Table 18 or 19; ChangeKey Case 1 §5.16.1 Table 25, Case 2
# §5.16.2 Table 26). The hex is the AN's own: command APDU, response APDU, the CRC32 of the new
# key.
def test_change_file_settings_example() -> None:
    """ChangeFileSettings of file 02 in CommMode.FULL at CmdCtr 1 of the §6.6 session (TI
    9D00C4DF): the settings, the APDU with MACt D799B7C1A0EF7A04, the MACed answer."""
    channel = SecureChannel(
        h("1309C877509E5A215007FF0ED19CA564"),
        h("4C6626F5E72EA694202139295C7A7FC7"),
        h("9D00C4DF"),
        counter=1,
    )
    settings = h("4000E0C1F121200000430000430000")
    apdu = channel.wrap(0x5F, CommMode.FULL, h("02"), settings)
    assert apdu == h("905F0000190261B6D97903566E84C3AE5274467E89EAD799B7C1A0EF7A0400")
    assert channel.unwrap(h("57BFF87B1241E93D" + "9100"), CommMode.MAC) == b""
    assert channel.counter == 2
    parsed = parse_change_file_settings(settings, 256)
    assert parsed.comm_mode is CommMode.PLAIN and parsed.sdm is not None
    assert (parsed.sdm.picc_data_offset, parsed.sdm.mac_offset) == (0x20, 0x43)


def _change_key_session(counter: int) -> SecureChannel:
    return SecureChannel(
        h("4CF3CB41A22583A61E89B158D252FC53"),
        h("5529860B2FC5FB6154B7F28361D30BF9"),
        h("7614281A"),
        counter=counter,
    )


def test_change_key_of_another_key_example() -> None:
    """ChangeKey Case 1: key 2 (old key all zero) to F3847D62…, version 01, at CmdCtr 2: the new
    key XOR the old, the version, CRC32NK 789DFADC, encrypted; MACt 5D0CE20BCD1D06E6."""
    new_key = h("F3847D627727ED3BC9C4CC050489B966")
    assert crc32_nxp(new_key) == h("789DFADC")
    xored = bytes(a ^ b for a, b in zip(new_key, ZERO, strict=True))
    channel = _change_key_session(2)
    apdu = channel.wrap(0xC4, CommMode.FULL, h("02"), xored + h("01") + crc32_nxp(new_key))
    assert apdu == h(
        "90C4000029022CF362B7BF4311FF3BE1DAA295E8C68DE09050560D19B9E16C2393AE9CD1FAC7"
        "5D0CE20BCD1D06E600"
    )
    assert channel.unwrap(h("203BB55D1089D587" + "9100"), CommMode.MAC) == b""
    assert channel.counter == 3


def test_change_key_of_the_session_key_example() -> None:
    """ChangeKey Case 2: key 0, the session's own, to 5004BF99…, version 01, at CmdCtr 3: the
    new key and its version only; the tag answers 91 00 without a MAC (the session ends)."""
    channel = _change_key_session(3)
    apdu = channel.wrap(0xC4, CommMode.FULL, h("00"), h("5004BF991F408672B1EF00F08F9E8647" + "01"))
    assert apdu == h(
        "90C400002900C0EB4DEEFEDDF0B513A03A95A75491818580503190D4D05053FF75668A01D6FD"
        "A6610234BDED643200"
    )


def test_a_response_with_a_flipped_mac_or_an_error_status_is_refused() -> None:
    def channel() -> SecureChannel:
        return SecureChannel(
            h("2B4D963C014DC36F24F69A50A394F875"),
            h("379D32130CE61705DD5FD8C36B95D764"),
            h("DF055522"),
        )

    good = h("70756055688505B52A5E26E59E329CD6595F672298EA41B7" + "9100")
    tampered = good[:20] + bytes((good[20] ^ 1,)) + good[21:]
    with pytest.raises(SecureMessagingError):
        channel().unwrap(tampered, CommMode.FULL)
    with pytest.raises(NativeStatusError) as caught:
        channel().unwrap(h("91AE"), CommMode.FULL)
    assert "authentication error" in str(caught.value)
    with pytest.raises(SecureMessagingError):
        channel().unwrap(h("0102" + "9100"), CommMode.MAC)


def test_the_sdm_settings_of_an12196_read_back() -> None:
    """§5.3's GetFileSettings answer names SDM settings our parser reads (MetaRead key 0)."""
    answer = h("0040EEEE000100D1FE001F00004400004400002000006A0000")
    assert AccessRights.from_bytes(answer[2:4]) == AccessRights(
        ACCESS_FREE, ACCESS_FREE, ACCESS_FREE, ACCESS_FREE
    )
    assert answer[7] & 0x10  # that example also encrypts file data, which we never configure
    with pytest.raises(ValueError, match="encrypted PICC data"):
        parse_change_file_settings(answer[1:4] + answer[7:], 256)


def test_our_file_settings_round_trip() -> None:
    settings = FileSettings(
        CommMode.PLAIN,
        AccessRights(read=ACCESS_FREE, write=0, read_write=0, change=0),
        SdmSettings(1, 2, picc_data_offset=0x30, mac_input_offset=0x5C, mac_offset=0x5C),
    )
    data = settings.change_bytes()
    assert data[:3] == h("4000E0")
    assert data[3:6] == h("C1FF12")
    assert parse_change_file_settings(data, 256) == settings
    limited = FileSettings(
        CommMode.MAC,
        AccessRights(0, 0, 0, 0),
        SdmSettings(1, 2, 0, 40, 40, read_counter_limit=1000),
    )
    assert parse_change_file_settings(limited.change_bytes(), 256) == limited
    plain = FileSettings(CommMode.FULL, AccessRights(2, 3, 3, 0))
    assert parse_change_file_settings(plain.change_bytes(), 128) == plain


@pytest.mark.parametrize(
    ("sdm", "size", "match"),
    [
        (SdmSettings(1, 2, 250, 0, 0), 256, "outside"),
        (SdmSettings(1, 2, 0, 0, 250), 256, "outside"),
        (SdmSettings(1, 2, 0, 20, 10), 256, "after the MAC"),
        (SdmSettings(1, 2, 0, 20, 20), 256, "overlap"),
        (SdmSettings(1, 0x0E, 0, 40, 40), 256, "name keys"),
    ],
)
def test_impossible_sdm_settings_are_refused(sdm: SdmSettings, size: int, match: str) -> None:
    data = FileSettings(CommMode.PLAIN, AccessRights(ACCESS_FREE, 0, 0, 0), sdm).change_bytes()
    with pytest.raises(ValueError, match=match):
        parse_change_file_settings(data, size)


def test_short_or_long_settings_are_refused() -> None:
    for data in (b"", h("40"), h("0000E0FF"), h("4000E0C1FF12")):
        with pytest.raises(ValueError):
            parse_change_file_settings(data, 256)


def test_crc32_of_changekey() -> None:
    # ISO/IEC 13239 CRC32 of "123456789" is CBF43926; NXP sends it uninverted, LSB first.
    assert crc32_nxp(b"123456789") == (0xCBF43926 ^ 0xFFFFFFFF).to_bytes(4, "little")


def test_the_url_template_and_its_offsets() -> None:
    template = ndef_template("https://pay.example.org/")
    assert sun_url_template("https://pay.example.org/") == (
        "https://pay.example.org/t?picc_data=" + "0" * 32 + "&cmac=" + "0" * 16
    )
    data = template.file_bytes
    assert int.from_bytes(data[:2], "big") == len(data) - 2
    assert data[2:7] == h("D101") + bytes((len(data) - 6,)) + b"U\x04"  # https:// abbreviated
    assert data[template.picc_data_offset : template.picc_data_offset + 32] == b"0" * 32
    assert data[template.mac_offset : template.mac_offset + 16] == b"0" * 16
    assert data[template.mac_offset - 6 : template.mac_offset] == b"&cmac="
    assert parse_ndef_uri(data) == sun_url_template("https://pay.example.org")


def test_a_url_too_long_for_the_file_is_refused() -> None:
    with pytest.raises(ValueError, match="longer"):
        ndef_template("https://" + "a" * 200 + ".example")
    with pytest.raises(ValueError, match="ASCII"):
        ndef_uri_file("https://bücher.example/")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x00",
        h("0010D1010B55"),  # truncated
        h("0009D1010455") + b"\x04abcd",  # payload length 4, one byte more in the message
        h("0007D2010355") + b"\x04ab",  # TNF 2
        h("0007D1010354") + b"\x02en",  # a text record
        h("0007D10103556162"),  # unknown prefix code 0x61
        h("0005D101015580"),  # empty URI after the prefix, non-ASCII
    ],
)
def test_what_is_not_one_uri_record_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_ndef_uri(data)


def test_read_ndef_url_in_three_apdus_and_its_failures() -> None:
    file_bytes = ndef_uri_file("https://pay.example/t?picc_data=X&cmac=Y") + bytes(100)
    sent: list[bytes] = []

    def tag(apdu: bytes) -> bytes:
        sent.append(apdu)
        return (file_bytes + h("9000")) if apdu[1] == 0xB0 else h("9000")

    assert read_ndef_url(tag) == "https://pay.example/t?picc_data=X&cmac=Y"
    assert sent == [
        h("00A4040C07D2760000850101"),
        h("00A4000C02E104"),
        h("00B0000000"),
    ]
    with pytest.raises(TagReadError, match="select application: 6A82"):
        read_ndef_url(lambda apdu: h("6A82"))
    with pytest.raises(TagReadError, match="parse NDEF file"):
        read_ndef_url(lambda apdu: h("00009000") if apdu[1] == 0xB0 else h("9000"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parsers_refuse_garbage_with_value_error_only(data: bytes) -> None:
    for parse in (parse_ndef_uri, lambda d: parse_change_file_settings(d, 256)):
        try:
            parse(data)
        except ValueError:
            pass
