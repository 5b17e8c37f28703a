"""NTAG 424 DNA: the command set, EV2 secure messaging, file settings and the SUN URL template.

Pure, shared by both ends of the air gap: the cloud's provisioning (cloud/wristbands.py) speaks
as the reader (PCD), the virtual wristband (device/virtual_ntag424.py) as the tag (PICC). Both
use ``SecureChannel`` below, and tests/protocol/test_ntag424.py holds it to NXP's published
numbers (AN12196 "NTAG 424 DNA and NTAG 424 DNA TagTamper features and hints": §5.3, §5.4, §6.6,
§6.10, §6.12, §7.3), so the two ends are right by NXP and not only by each other.

EV2 secure messaging in one paragraph (NT4H2421Gx §9.1): AuthenticateEV2First gives a 4-byte
transaction identifier TI and two session keys, ``SesAuthENC = CMAC(K, SV1)`` and
``SesAuthMAC = CMAC(K, SV2)``; every command after it carries the 16-bit command counter CmdCtr
(little-endian, starts at 0, +1 per answered command). CommMode.MAC appends
``MACt = odd bytes of CMAC(SesAuthMAC, Cmd ‖ CmdCtr ‖ TI ‖ header ‖ data)``; CommMode.FULL also
encrypts the data (ISO 9797-1 padding method 2) with AES-CBC under SesAuthENC and
``IV = E(SesAuthENC, A5 5A ‖ TI ‖ CmdCtr ‖ 0…)``. Responses are MACed over
``RC ‖ CmdCtr+1 ‖ TI ‖ data`` and encrypted with ``IV = E(SesAuthENC, 5A A5 ‖ TI ‖ CmdCtr+1 ‖ 0…)``.
"""

from __future__ import annotations

import binascii
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from protocol.limits import NDEF_URI_LENGTH_MAX
from protocol.sun import (
    AES_BLOCK_BYTES,
    PICC_DATA_HEX_LENGTH,
    SUN_CMAC_HEX_LENGTH,
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    aes_cmac,
    aes_ecb_encrypt,
    iso_pad,
    iso_unpad,
    truncate_mac,
)

Transmit = Callable[[bytes], bytes]
"""One command APDU to the tag, its response APDU (data ‖ SW1 SW2) back."""

# --- identifiers ----------------------------------------------------------------------------

NDEF_APPLICATION_ID: Final = bytes.fromhex("D2760000850101")  # ISO DF name of the NDEF app
CC_FILE_ID: Final = bytes.fromhex("E103")  # ISO file id of the capability container (file 01)
NDEF_FILE_ID: Final = bytes.fromhex("E104")  # ISO file id of the NDEF file (file 02)
CC_FILE_NO: Final = 0x01
NDEF_FILE_NO: Final = 0x02
PROPRIETARY_FILE_NO: Final = 0x03
NDEF_FILE_BYTES: Final = 256
KEY_COUNT: Final = 5
KEY_APP: Final = 0  # application master key: K_app(uid)
KEY_SDM_META: Final = 1  # SDMMetaRead: K_meta
KEY_SDM_FILE: Final = 2  # SDMFileRead: K_file(uid)
FACTORY_KEY: Final = bytes(16)

# GetVersion's hardware part: vendor NXP, type NTAG, subtype 0x02 (NTAG 424 DNA, 50 pF), major 0x30.
VERSION_VENDOR_NXP: Final = 0x04
VERSION_TYPE_NTAG: Final = 0x04
VERSION_MAJOR_NTAG424: Final = 0x30
NTAG424_HARDWARE_VERSION: Final = bytes.fromhex("04040230001105")
NTAG424_SOFTWARE_VERSION: Final = bytes.fromhex("04040102011105")


class Ins(IntEnum):
    """Native command codes (CLA 0x90) and ISO instructions (CLA 0x00) the kiosk and provisioning
    use."""

    AUTHENTICATE_EV2_FIRST = 0x71
    ADDITIONAL_FRAME = 0xAF
    GET_VERSION = 0x60
    GET_CARD_UID = 0x51
    GET_FILE_SETTINGS = 0xF5
    CHANGE_FILE_SETTINGS = 0x5F
    CHANGE_KEY = 0xC4
    WRITE_DATA = 0x8D
    ISO_SELECT = 0xA4
    ISO_READ_BINARY = 0xB0


CLA_NATIVE: Final = 0x90
CLA_ISO: Final = 0x00

# Status words. Native commands answer 91 xx (xx the PICC status), ISO ones the ISO words.
SW_OK: Final = b"\x90\x00"
SW_NATIVE_OK: Final = b"\x91\x00"
SW_ADDITIONAL_FRAME: Final = b"\x91\xaf"
SW_LENGTH_ERROR: Final = b"\x91\x7e"
SW_AUTHENTICATION_ERROR: Final = b"\x91\xae"
SW_PERMISSION_DENIED: Final = b"\x91\x9d"
SW_PARAMETER_ERROR: Final = b"\x91\x9e"
SW_NO_SUCH_KEY: Final = b"\x91\x40"
SW_INTEGRITY_ERROR: Final = b"\x91\x1e"
SW_FILE_NOT_FOUND: Final = b"\x91\xf0"
SW_BOUNDARY_ERROR: Final = b"\x91\xbe"
SW_ILLEGAL_COMMAND: Final = b"\x91\x1c"
SW_COMMAND_ABORTED: Final = b"\x91\xca"
SW_ISO_FILE_NOT_FOUND: Final = b"\x6a\x82"
SW_ISO_SECURITY_STATUS: Final = b"\x69\x82"
SW_ISO_WRONG_LENGTH: Final = b"\x67\x00"
SW_ISO_WRONG_PARAMETERS: Final = b"\x6b\x00"
SW_ISO_INS_NOT_SUPPORTED: Final = b"\x6d\x00"
SW_ISO_CLA_NOT_SUPPORTED: Final = b"\x6e\x00"

SW_NAMES: Final[dict[bytes, str]] = {
    SW_LENGTH_ERROR: "length error",
    SW_AUTHENTICATION_ERROR: "authentication error",
    SW_PERMISSION_DENIED: "permission denied",
    SW_PARAMETER_ERROR: "parameter error",
    SW_NO_SUCH_KEY: "no such key",
    SW_INTEGRITY_ERROR: "integrity error",
    SW_FILE_NOT_FOUND: "file not found",
    SW_BOUNDARY_ERROR: "boundary error",
    SW_ILLEGAL_COMMAND: "illegal command",
    SW_COMMAND_ABORTED: "command aborted",
    SW_ISO_FILE_NOT_FOUND: "file or application not found",
    SW_ISO_SECURITY_STATUS: "security status not satisfied",
    SW_ISO_WRONG_LENGTH: "wrong length",
    SW_ISO_WRONG_PARAMETERS: "wrong parameters",
    SW_ISO_INS_NOT_SUPPORTED: "instruction not supported",
    SW_ISO_CLA_NOT_SUPPORTED: "class not supported",
}


def status_text(status_word: bytes) -> str:
    name = SW_NAMES.get(status_word, "unexpected status")
    return f"{status_word.hex().upper()} ({name})"


class CommMode(IntEnum):
    PLAIN = 0x00
    MAC = 0x01
    FULL = 0x03


ACCESS_FREE: Final = 0x0E
ACCESS_NEVER: Final = 0x0F


def native_apdu(ins: int, data: bytes = b"") -> bytes:
    """A native command wrapped in ISO 7816-4 (CLA 90, P1 P2 00, Lc only with data, Le 00)."""
    if data:
        return bytes((CLA_NATIVE, ins, 0, 0, len(data))) + data + b"\x00"
    return bytes((CLA_NATIVE, ins, 0, 0, 0))


def select_application_apdu() -> bytes:
    """ISO SELECT by DF name of the NDEF application (no FCI asked for)."""
    return bytes((CLA_ISO, Ins.ISO_SELECT, 0x04, 0x0C, len(NDEF_APPLICATION_ID))) + (
        NDEF_APPLICATION_ID
    )


def select_file_apdu(file_id: bytes) -> bytes:
    """ISO SELECT of an elementary file by its id (no FCI asked for)."""
    return bytes((CLA_ISO, Ins.ISO_SELECT, 0x00, 0x0C, len(file_id))) + file_id


def read_binary_apdu(offset: int, length: int) -> bytes:
    """ISO READ BINARY of ``length`` bytes (0 = up to 256, to the end of the file) at
    ``offset``."""
    if not 0 <= offset <= 0x7FFF or not 0 <= length <= 0xFF:
        raise ValueError("READ BINARY: offset 0-32767, length 0-255 (0 means 256)")
    return bytes((CLA_ISO, Ins.ISO_READ_BINARY, offset >> 8, offset & 0xFF, length))


def rotate_left(data: bytes) -> bytes:
    return data[1:] + data[:1]


def crc32_nxp(data: bytes) -> bytes:
    """ChangeKey's CRC32 of the new key: the ISO/IEC 13239 CRC32 without its final inversion,
    least significant byte first (NT4H2421Gx §10.6.1, "CRC32NK")."""
    return ((binascii.crc32(data) ^ 0xFFFFFFFF) & 0xFFFFFFFF).to_bytes(4, "little")


def u24(value: int) -> bytes:
    return value.to_bytes(3, "little")


def from_u24(data: bytes) -> int:
    return int.from_bytes(data, "little")


# --- AuthenticateEV2First -------------------------------------------------------------------


def session_keys(key: bytes, rnd_a: bytes, rnd_b: bytes) -> tuple[bytes, bytes]:
    """SesAuthENCKey and SesAuthMACKey of an AuthenticateEV2First (NT4H2421Gx §9.1.7)."""
    mixed = rnd_a[0:2] + bytes(a ^ b for a, b in zip(rnd_a[2:8], rnd_b[0:6], strict=True))
    context = mixed + rnd_b[6:16] + rnd_a[8:16]
    enc = aes_cmac(key, b"\xa5\x5a\x00\x01\x00\x80" + context)
    mac = aes_cmac(key, b"\x5a\xa5\x00\x01\x00\x80" + context)
    return enc, mac


class SecureMessagingError(Exception):
    """A response that breaks EV2 secure messaging: a wrong MAC, length or padding."""


@dataclass
class SecureChannel:
    """One authenticated EV2 session, usable from either end.

    ``counter`` is CmdCtr: a command is MACed and encrypted with its current value; when the
    command is answered both ends call ``advance()`` and the response uses the new value."""

    enc_key: bytes
    mac_key: bytes
    ti: bytes
    counter: int = 0
    key_no: int = 0

    def _iv(self, label: bytes) -> bytes:
        block = label + self.ti + self.counter.to_bytes(2, "little") + bytes(8)
        return aes_ecb_encrypt(self.enc_key, block)

    def advance(self) -> None:
        self.counter = (self.counter + 1) & 0xFFFF

    # command side (CmdCtr = the command's)
    def command_mac(self, ins: int, header: bytes, data: bytes) -> bytes:
        message = bytes((ins,)) + self.counter.to_bytes(2, "little") + self.ti + header + data
        return truncate_mac(aes_cmac(self.mac_key, message))

    def encrypt_command_data(self, data: bytes) -> bytes:
        return aes_cbc_encrypt(self.enc_key, self._iv(b"\xa5\x5a"), iso_pad(data))

    def decrypt_command_data(self, data: bytes) -> bytes:
        if not data or len(data) % AES_BLOCK_BYTES:
            raise SecureMessagingError("encrypted command data is whole AES blocks")
        try:
            return iso_unpad(aes_cbc_decrypt(self.enc_key, self._iv(b"\xa5\x5a"), data))
        except ValueError as error:
            raise SecureMessagingError(str(error)) from None

    # response side (CmdCtr already advanced)
    def response_mac(self, status: int, data: bytes) -> bytes:
        message = bytes((status,)) + self.counter.to_bytes(2, "little") + self.ti + data
        return truncate_mac(aes_cmac(self.mac_key, message))

    def encrypt_response_data(self, data: bytes) -> bytes:
        return aes_cbc_encrypt(self.enc_key, self._iv(b"\x5a\xa5"), iso_pad(data))

    def decrypt_response_data(self, data: bytes) -> bytes:
        if not data or len(data) % AES_BLOCK_BYTES:
            raise SecureMessagingError("encrypted response data is whole AES blocks")
        try:
            return iso_unpad(aes_cbc_decrypt(self.enc_key, self._iv(b"\x5a\xa5"), data))
        except ValueError as error:
            raise SecureMessagingError(str(error)) from None

    # the reader's whole command / response
    def wrap(self, ins: int, mode: CommMode, header: bytes = b"", data: bytes = b"") -> bytes:
        """The command APDU in ``mode`` (PLAIN sends ``header ‖ data`` as it is)."""
        if mode is CommMode.PLAIN:
            return native_apdu(ins, header + data)
        body = self.encrypt_command_data(data) if mode is CommMode.FULL and data else data
        return native_apdu(ins, header + body + self.command_mac(ins, header, body))

    def unwrap(self, response: bytes, mode: CommMode) -> bytes:
        """The response's plain data; advances CmdCtr. A status other than 91 00 is returned as
        ``NativeStatusError`` (the session is over: the tag drops it on errors);
        SecureMessagingError when the MAC, length or padding is wrong."""
        if len(response) < 2:
            raise SecureMessagingError("a response has at least its two status bytes")
        data, status_word = response[:-2], response[-2:]
        if status_word != SW_NATIVE_OK:
            raise NativeStatusError(status_word)
        self.advance()
        if mode is CommMode.PLAIN:
            return data
        if len(data) < 8:
            raise SecureMessagingError("a MACed response carries 8 MAC bytes")
        body, mac = data[:-8], data[-8:]
        if not hmac.compare_digest(self.response_mac(0x00, body), mac):
            raise SecureMessagingError("the response MAC does not verify")
        if mode is CommMode.FULL and body:
            return self.decrypt_response_data(body)
        return body


class NativeStatusError(Exception):
    """The tag answered a status other than success."""

    def __init__(self, status_word: bytes) -> None:
        super().__init__(status_text(status_word))
        self.status_word = status_word


# --- file settings --------------------------------------------------------------------------

SDM_OPTION_UID: Final = 0x80
SDM_OPTION_READ_COUNTER: Final = 0x40
SDM_OPTION_READ_COUNTER_LIMIT: Final = 0x20
SDM_OPTION_ENC_FILE_DATA: Final = 0x10
SDM_OPTION_ASCII: Final = 0x01
FILE_OPTION_SDM: Final = 0x40


@dataclass(frozen=True, slots=True)
class AccessRights:
    """A file's four access conditions: a key number 0-4, ACCESS_FREE (E) or ACCESS_NEVER (F).
    On the wire ``[ReadWrite|Change] [Read|Write]`` (two bytes, high nibble first)."""

    read: int
    write: int
    read_write: int
    change: int

    def to_bytes(self) -> bytes:
        return bytes(((self.read_write << 4) | self.change, (self.read << 4) | self.write))

    @classmethod
    def from_bytes(cls, data: bytes) -> AccessRights:
        return cls(
            read=data[1] >> 4, write=data[1] & 0xF, read_write=data[0] >> 4, change=data[0] & 0xF
        )


@dataclass(frozen=True, slots=True)
class SdmSettings:
    """Secure Dynamic Messaging with encrypted PICC data (the only kind we use): the keys of the
    meta read and the file read (MAC), and the offsets into the file. The MAC input starts at
    ``mac_input_offset``: equal to ``mac_offset`` it is empty."""

    meta_read_key: int
    file_read_key: int
    picc_data_offset: int
    mac_input_offset: int
    mac_offset: int
    counter_retrieval_key: int = ACCESS_NEVER
    read_counter_limit: int | None = None

    @property
    def options(self) -> int:
        options = SDM_OPTION_UID | SDM_OPTION_READ_COUNTER | SDM_OPTION_ASCII
        if self.read_counter_limit is not None:
            options |= SDM_OPTION_READ_COUNTER_LIMIT
        return options

    def to_bytes(self) -> bytes:
        data = bytes(
            (
                self.options,
                0xF0 | self.counter_retrieval_key,
                (self.meta_read_key << 4) | self.file_read_key,
            )
        )
        data += u24(self.picc_data_offset) + u24(self.mac_input_offset) + u24(self.mac_offset)
        if self.read_counter_limit is not None:
            data += u24(self.read_counter_limit)
        return data


@dataclass(frozen=True, slots=True)
class FileSettings:
    comm_mode: CommMode
    access: AccessRights
    sdm: SdmSettings | None = None

    def change_bytes(self) -> bytes:
        """ChangeFileSettings' data: FileOption ‖ AccessRights ‖ [SDM settings]."""
        option = self.comm_mode | (FILE_OPTION_SDM if self.sdm is not None else 0)
        data = bytes((option,)) + self.access.to_bytes()
        return data + (self.sdm.to_bytes() if self.sdm is not None else b"")


def parse_change_file_settings(data: bytes, file_size: int) -> FileSettings:
    """ChangeFileSettings' data back into settings; ValueError for what the tag refuses
    (a parameter error): wrong length, SDM mirrors outside the file or overlapping, and the SDM
    variants we never configure (plain UID mirror, encrypted file data)."""
    if len(data) < 3:
        raise ValueError("too short")
    option = data[0]
    if option & ~(FILE_OPTION_SDM | 0x03) or (option & 0x03) == 0x02:
        raise ValueError("unknown file option")
    comm_mode = CommMode(option & 0x03)
    access = AccessRights.from_bytes(data[1:3])
    if not option & FILE_OPTION_SDM:
        if len(data) != 3:
            raise ValueError("trailing bytes")
        return FileSettings(comm_mode, access)
    if len(data) < 6:
        raise ValueError("SDM settings too short")
    options, rights_high, rights_low = data[3], data[4], data[5]
    meta_read, file_read = rights_low >> 4, rights_low & 0xF
    wanted = SDM_OPTION_UID | SDM_OPTION_READ_COUNTER | SDM_OPTION_ASCII
    if options & wanted != wanted or options & SDM_OPTION_ENC_FILE_DATA:
        raise ValueError("only encrypted PICC data with UID and counter, ASCII, is supported")
    if options & ~(wanted | SDM_OPTION_READ_COUNTER_LIMIT):
        raise ValueError("unknown SDM option")
    if meta_read >= KEY_COUNT or file_read >= KEY_COUNT:
        raise ValueError("SDMMetaRead and SDMFileRead must name keys")
    has_limit = bool(options & SDM_OPTION_READ_COUNTER_LIMIT)
    expected = 6 + 9 + (3 if has_limit else 0)
    if len(data) != expected:
        raise ValueError("SDM settings of the wrong length")
    picc_offset, input_offset, mac_offset = (
        from_u24(data[6:9]),
        from_u24(data[9:12]),
        from_u24(data[12:15]),
    )
    limit = from_u24(data[15:18]) if has_limit else None
    if picc_offset + PICC_DATA_HEX_LENGTH > file_size or mac_offset + SUN_CMAC_HEX_LENGTH > (
        file_size
    ):
        raise ValueError("an SDM mirror lies outside the file")
    if input_offset > mac_offset:
        raise ValueError("the MAC input starts after the MAC")
    if not (
        picc_offset + PICC_DATA_HEX_LENGTH <= mac_offset
        or mac_offset + SUN_CMAC_HEX_LENGTH <= picc_offset
    ):
        raise ValueError("the SDM mirrors overlap")
    sdm = SdmSettings(
        meta_read_key=meta_read,
        file_read_key=file_read,
        picc_data_offset=picc_offset,
        mac_input_offset=input_offset,
        mac_offset=mac_offset,
        counter_retrieval_key=rights_high & 0xF,
        read_counter_limit=limit,
    )
    return FileSettings(comm_mode, access, sdm)


# --- the NDEF file: one URI record ----------------------------------------------------------
# We write and read exactly one short NDEF URI record (NFC Forum URI RTD), so this is done by
# hand in a few lines rather than with ndeflib (0.3.3, 2019): that would be a new dependency on
# both the kiosk and the cloud, with its own adapter, for one record layout whose every byte we
# choose; the parser below refuses anything else with a clear ValueError and never crashes.

_NDEF_SHORT_URI_HEADER: Final = 0xD1  # MB | ME | SR, TNF 1 (well-known)
_URI_TYPE: Final = b"U"
_URI_PREFIXES: Final[dict[int, str]] = {
    0x00: "",
    0x01: "http://www.",
    0x02: "https://www.",
    0x03: "http://",
    0x04: "https://",
}


@dataclass(frozen=True, slots=True)
class NdefTemplate:
    """The NDEF file we write: its bytes (placeholders of zeros where the tag mirrors) and the
    mirrors' offsets from the start of the file."""

    file_bytes: bytes
    picc_data_offset: int
    mac_offset: int


def sun_url_template(portal_url: str) -> str:
    """``{portal}/t?picc_data=0…0&cmac=0…0`` (PROTOCOL.md), placeholders of ASCII zeros."""
    base = portal_url.rstrip("/")
    return f"{base}/t?picc_data={'0' * PICC_DATA_HEX_LENGTH}&cmac={'0' * SUN_CMAC_HEX_LENGTH}"


def ndef_uri_file(url: str) -> bytes:
    """The NDEF file's content (NLEN ‖ one short URI record) for ``url``; ValueError when it
    does not fit the 256-byte file or is not ASCII."""
    if not url.isascii():
        raise ValueError("the wristband URL must be ASCII")
    code, rest = 0x00, url
    for prefix_code, prefix in sorted(_URI_PREFIXES.items(), key=lambda kv: -len(kv[1])):
        if prefix and url.startswith(prefix):
            code, rest = prefix_code, url[len(prefix) :]
            break
    payload = bytes((code,)) + rest.encode("ascii")
    if len(payload) > NDEF_URI_LENGTH_MAX + 1:
        raise ValueError(f"the wristband URL is longer than the NDEF file holds ({len(url)})")
    record = bytes((_NDEF_SHORT_URI_HEADER, 1, len(payload))) + _URI_TYPE + payload
    return len(record).to_bytes(2, "big") + record


def ndef_template(portal_url: str) -> NdefTemplate:
    """The file for ``portal_url`` and the offsets of ``picc_data`` and ``cmac`` in it."""
    url = sun_url_template(portal_url)
    data = ndef_uri_file(url)
    text = data.decode("latin-1")
    picc = text.index("picc_data=") + len("picc_data=")
    mac = text.index("&cmac=") + len("&cmac=")
    return NdefTemplate(file_bytes=data, picc_data_offset=picc, mac_offset=mac)


def parse_ndef_uri(file_bytes: bytes) -> str:
    """The URL of an NDEF file holding one short URI record (NLEN ‖ record); ValueError on
    anything else: empty, truncated, another record type, several records."""
    if len(file_bytes) < 2:
        raise ValueError("no NDEF length")
    length = int.from_bytes(file_bytes[:2], "big")
    if length == 0:
        raise ValueError("empty NDEF file")
    record = file_bytes[2 : 2 + length]
    if len(record) != length or length < 4:
        raise ValueError("truncated NDEF message")
    if record[0] != _NDEF_SHORT_URI_HEADER or record[1] != 1 or record[3:4] != _URI_TYPE:
        raise ValueError("not a single short URI record")
    payload = record[4:]
    if record[2] != len(payload) or not payload:
        raise ValueError("URI record length does not match")
    prefix = _URI_PREFIXES.get(payload[0])
    if prefix is None:
        raise ValueError("unknown URI prefix code")
    rest = payload[1:]
    if not rest.isascii():
        raise ValueError("URI is not ASCII")
    return prefix + rest.decode("ascii")


@dataclass
class GetVersionReply:
    hardware: bytes
    software: bytes
    production: bytes = field(default=b"")

    @property
    def is_ntag424(self) -> bool:
        hw = self.hardware
        return (
            len(hw) == 7
            and hw[0] == VERSION_VENDOR_NXP
            and hw[1] == VERSION_TYPE_NTAG
            and hw[3] == VERSION_MAJOR_NTAG424
        )


# --- reading the NDEF file (the kiosk, provisioning's read-back) ----------------------------


class TagCommunicationError(Exception):
    """The tag could not be reached (removed, reader gone): raised by a ``Transmit``."""


class TagReadError(Exception):
    """The NDEF file could not be read or holds no URL we can parse (``step`` says where)."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


NDEF_READ_APDUS: Final = 3
"""What ``read_ndef_url`` sends: SELECT application, SELECT file, one READ BINARY."""


def read_ndef_url(transmit: Transmit) -> str:
    """The URL in the tag's NDEF file, in three APDUs (docs/kiosk.md budgets them): SELECT the
    NDEF application, SELECT E104, READ BINARY of the whole file (Le 00: up to 256 bytes; NLEN
    then tells how much of it is the message). TagReadError when a step fails or the file holds
    no single URI record; TagCommunicationError passes through."""
    for step, apdu in (
        ("select application", select_application_apdu()),
        ("select NDEF file", select_file_apdu(NDEF_FILE_ID)),
    ):
        response = transmit(apdu)
        if response[-2:] != SW_OK:
            raise TagReadError(step, status_text(response[-2:]))
    response = transmit(read_binary_apdu(0, 0))
    if len(response) < 2 or response[-2:] != SW_OK:
        raise TagReadError("read NDEF file", status_text(response[-2:]))
    try:
        return parse_ndef_uri(response[:-2])
    except ValueError as error:
        raise TagReadError("parse NDEF file", str(error)) from None
