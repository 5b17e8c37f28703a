"""A virtual NTAG 424 DNA wristband: the commands the kiosk and provisioning use, as NXP's data
sheet (NT4H2421Gx) and AN12196 describe them.

``VirtualNtag424.answer(apdu)`` is the tag's whole behaviour, a plain function of its state and
one command APDU (tests drive it directly); ``device.virtual_card.VirtualCard(tag=…)`` serves it
on the vpcd reader through real pcscd. The state (keys, files, settings, SDMReadCtr) lives in
the object for as long as it does: remove the band and tap it again, it is the same band;
``reset()`` (the card leaving the field) ends the selection and any authenticated session.

Supported:
- ISO SELECT of the NDEF application (DF name D2760000850101) and of the files E103 (CC) and
  E104 (NDEF), ISO READ BINARY with Secure Dynamic Messaging: with SDM on, the first read after
  a SELECT of the file increments SDMReadCtr and every read of that selection mirrors the
  encrypted PICC data and the SDMMAC (ASCII hex) at the configured offsets;
- GetVersion (three frames), AuthenticateEV2First, GetCardUID, GetFileSettings,
  ChangeFileSettings, ChangeKey and WriteData with EV2 secure messaging in the communication
  mode the data sheet gives each (ChangeKey, ChangeFileSettings and GetCardUID FULL; WriteData
  the file's own mode; GetFileSettings MAC when authenticated);
- errors as status words: 91 AE authentication, 91 7E length, 91 1E integrity (bad MAC or
  padding), 91 9D permission denied, 91 9E parameter, 91 40 no such key, 91 F0 file not found,
  91 BE boundary, 91 CA aborted, 91 1C illegal command; ISO 6A 82, 69 82, 67 00, 6B 00, 6D 00.
  A failed secure-messaging command ends the session, as on the tag.

Not modelled: LRP mode, random ID, originality signature, ReadData, the proprietary file's
contents beyond its settings, SDM encrypted file data and the plain UID mirror (refused with
91 9E: provisioning never configures them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.limits import SUN_COUNTER_MAX
from protocol.ntag424 import (
    ACCESS_FREE,
    CC_FILE_ID,
    CC_FILE_NO,
    CLA_ISO,
    CLA_NATIVE,
    FACTORY_KEY,
    KEY_COUNT,
    NDEF_APPLICATION_ID,
    NDEF_FILE_BYTES,
    NDEF_FILE_ID,
    NDEF_FILE_NO,
    NTAG424_HARDWARE_VERSION,
    NTAG424_SOFTWARE_VERSION,
    PROPRIETARY_FILE_NO,
    SW_ADDITIONAL_FRAME,
    SW_AUTHENTICATION_ERROR,
    SW_BOUNDARY_ERROR,
    SW_COMMAND_ABORTED,
    SW_FILE_NOT_FOUND,
    SW_ILLEGAL_COMMAND,
    SW_INTEGRITY_ERROR,
    SW_ISO_CLA_NOT_SUPPORTED,
    SW_ISO_FILE_NOT_FOUND,
    SW_ISO_INS_NOT_SUPPORTED,
    SW_ISO_SECURITY_STATUS,
    SW_ISO_WRONG_LENGTH,
    SW_ISO_WRONG_PARAMETERS,
    SW_LENGTH_ERROR,
    SW_NATIVE_OK,
    SW_NO_SUCH_KEY,
    SW_OK,
    SW_PARAMETER_ERROR,
    SW_PERMISSION_DENIED,
    AccessRights,
    CommMode,
    FileSettings,
    Ins,
    SecureChannel,
    SecureMessagingError,
    crc32_nxp,
    from_u24,
    parse_change_file_settings,
    rotate_left,
    session_keys,
    u24,
)
from protocol.sun import (
    PICC_DATA_HEX_LENGTH,
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    encrypt_picc_data,
    sdm_mac,
)

# The factory capability container (NFC Forum Type 4 Tag, NDEF file E104 of 256 bytes, read
# free, write free), as NT4H2421Gx §8.2.3.2 lists it.
FACTORY_CC: bytes = bytes.fromhex(
    "001720010000FF0406E104010000000506E10500808283000000000000000000"
)
_GET_UID_PREFIX = b"\xff\xca\x00\x00"


class _Refused(Exception):
    """A command the tag answers with an error status (and, in a session, ends it)."""

    def __init__(self, status_word: bytes) -> None:
        super().__init__(status_word.hex())
        self.status_word = status_word


@dataclass
class _File:
    settings: FileSettings
    data: bytearray


@dataclass
class _PendingAuth:
    key_no: int
    rnd_b: bytes


def _factory_files() -> dict[int, _File]:
    return {
        CC_FILE_NO: _File(
            FileSettings(CommMode.PLAIN, AccessRights(ACCESS_FREE, 0, 0, 0)),
            bytearray(FACTORY_CC),
        ),
        NDEF_FILE_NO: _File(
            FileSettings(CommMode.PLAIN, AccessRights(ACCESS_FREE, ACCESS_FREE, ACCESS_FREE, 0)),
            bytearray(NDEF_FILE_BYTES),
        ),
        PROPRIETARY_FILE_NO: _File(
            FileSettings(CommMode.FULL, AccessRights(2, 3, 3, 0)), bytearray(128)
        ),
    }


_FILE_IDS = {CC_FILE_ID: CC_FILE_NO, NDEF_FILE_ID: NDEF_FILE_NO}


@dataclass
class VirtualNtag424:
    """One NTAG 424 DNA. ``VirtualNtag424(uid)`` is factory-fresh: all five keys zero, no SDM,
    an empty NDEF file. ``random_bytes`` supplies RndB, TI and the PICC data padding
    (deterministic in tests if wanted)."""

    uid: bytes
    random_bytes: Callable[[int], bytes] = os.urandom
    keys: list[bytes] = field(default_factory=lambda: [FACTORY_KEY] * KEY_COUNT)
    key_versions: list[int] = field(default_factory=lambda: [0] * KEY_COUNT)
    files: dict[int, _File] = field(default_factory=_factory_files)
    sdm_read_counter: int = 0
    # volatile: what a removal from the field forgets
    app_selected: bool = False
    selected_file: int | None = None
    counter_bumped: bool = False
    session: SecureChannel | None = None
    pending_auth: _PendingAuth | None = None
    version_frame: int = 0
    commands_seen: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.uid, str):
            self.uid = bytes.fromhex(self.uid)
        if len(self.uid) != 7:
            raise ValueError("an NTAG 424 DNA has a 7-byte UID")

    # --- the field ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Power off / leave the field: nothing selected, no session."""
        self.app_selected = False
        self.selected_file = None
        self.counter_bumped = False
        self.session = None
        self.pending_auth = None
        self.version_frame = 0

    def answer(self, apdu: bytes) -> bytes:
        """The response APDU to one command APDU."""
        self.commands_seen.append(bytes(apdu))
        if len(apdu) < 4:
            return SW_ISO_WRONG_LENGTH
        if apdu[:4] == _GET_UID_PREFIX:  # the reader's own GET UID pseudo-APDU
            return self.uid + SW_OK if len(apdu) == 5 else SW_ISO_WRONG_LENGTH
        try:
            if apdu[0] == CLA_ISO:
                return self._iso(apdu)
            if apdu[0] == CLA_NATIVE:
                return self._native(apdu)
            return SW_ISO_CLA_NOT_SUPPORTED
        except _Refused as refused:
            if refused.status_word[0] == 0x91:
                self.session = None
                self.pending_auth = None
            return refused.status_word

    # --- ISO 7816-4 --------------------------------------------------------------------------

    def _iso(self, apdu: bytes) -> bytes:
        ins, p1, p2 = apdu[1], apdu[2], apdu[3]
        if ins == Ins.ISO_SELECT:
            return self._select(p1, p2, apdu[4:])
        if ins == Ins.ISO_READ_BINARY:
            if len(apdu) != 5:
                return SW_ISO_WRONG_LENGTH
            return self._read_binary(((p1 & 0x7F) << 8) | p2, apdu[4] or 256, p1 & 0x80)
        return SW_ISO_INS_NOT_SUPPORTED

    def _select(self, p1: int, p2: int, body: bytes) -> bytes:
        if not body or len(body) < 1 + body[0]:
            return SW_ISO_WRONG_LENGTH
        name = body[1 : 1 + body[0]]
        if p1 == 0x04:  # by DF name
            if name != NDEF_APPLICATION_ID:
                return SW_ISO_FILE_NOT_FOUND
            self.app_selected = True
            self.selected_file = None
            self.session = None  # selecting an application ends authentication
            return SW_OK
        if p1 in (0x00, 0x02) and self.app_selected:
            file_no = _FILE_IDS.get(bytes(name))
            if file_no is None:
                return SW_ISO_FILE_NOT_FOUND
            self.selected_file = file_no
            self.counter_bumped = False
            return SW_OK
        if p1 in (0x00, 0x02):
            return SW_ISO_FILE_NOT_FOUND
        return SW_ISO_WRONG_PARAMETERS

    def _read_binary(self, offset: int, length: int, short_file_id: int) -> bytes:
        if short_file_id or self.selected_file is None:
            return SW_ISO_FILE_NOT_FOUND if self.selected_file is None else SW_ISO_WRONG_PARAMETERS
        file = self.files[self.selected_file]
        if file.settings.access.read != ACCESS_FREE:
            return SW_ISO_SECURITY_STATUS
        if offset >= len(file.data):
            return SW_ISO_WRONG_PARAMETERS
        content = self._mirrored(self.selected_file, file)
        return content[offset : offset + length] + SW_OK

    def _mirrored(self, file_no: int, file: _File) -> bytes:
        """The file as a reader sees it: with SDM, the PICC data and SDMMAC mirrored in."""
        sdm = file.settings.sdm
        data = bytearray(file.data)
        if sdm is None:
            return bytes(data)
        if not self.counter_bumped:
            limit = sdm.read_counter_limit
            if self.sdm_read_counter >= SUN_COUNTER_MAX or (
                limit is not None and self.sdm_read_counter >= limit
            ):
                raise _Refused(SW_ISO_SECURITY_STATUS)
            self.sdm_read_counter += 1
            self.counter_bumped = True
        counter = self.sdm_read_counter
        picc = encrypt_picc_data(
            self.keys[sdm.meta_read_key], self.uid, counter, self.random_bytes(5)
        )
        data[sdm.picc_data_offset : sdm.picc_data_offset + PICC_DATA_HEX_LENGTH] = (
            picc.hex().upper().encode("ascii")
        )
        mac_input = bytes(data[sdm.mac_input_offset : sdm.mac_offset])
        mac = sdm_mac(self.keys[sdm.file_read_key], self.uid, counter, mac_input)
        data[sdm.mac_offset : sdm.mac_offset + 16] = mac.hex().upper().encode("ascii")
        return bytes(data)

    # --- native commands ---------------------------------------------------------------------

    def _native(self, apdu: bytes) -> bytes:
        ins = apdu[1]
        if apdu[2:4] != b"\x00\x00":
            raise _Refused(SW_PARAMETER_ERROR)
        data = _native_data(apdu)
        if ins == Ins.ADDITIONAL_FRAME:
            return self._additional_frame(data)
        # any other command cancels a pending multi-frame exchange
        self.version_frame = 0
        self.pending_auth = None
        if ins == Ins.GET_VERSION:
            if data:
                raise _Refused(SW_LENGTH_ERROR)
            self.version_frame = 1
            return NTAG424_HARDWARE_VERSION + SW_ADDITIONAL_FRAME
        if not self.app_selected:
            raise _Refused(SW_PERMISSION_DENIED)
        commands: dict[int, Callable[[bytes], bytes]] = {
            Ins.AUTHENTICATE_EV2_FIRST: self._authenticate_first,
            Ins.GET_CARD_UID: self._get_card_uid,
            Ins.GET_FILE_SETTINGS: self._get_file_settings,
            Ins.CHANGE_FILE_SETTINGS: self._change_file_settings,
            Ins.CHANGE_KEY: self._change_key,
            Ins.WRITE_DATA: self._write_data,
        }
        command = commands.get(ins)
        if command is None:
            raise _Refused(SW_ILLEGAL_COMMAND)
        return command(data)

    def _additional_frame(self, data: bytes) -> bytes:
        if self.version_frame == 1 and not data:
            self.version_frame = 2
            return NTAG424_SOFTWARE_VERSION + SW_ADDITIONAL_FRAME
        if self.version_frame == 2 and not data:
            self.version_frame = 0
            production = self.uid + bytes.fromhex("CF39A1F000") + bytes.fromhex("2E21")
            return production + SW_NATIVE_OK
        self.version_frame = 0
        pending, self.pending_auth = self.pending_auth, None
        if pending is None:
            raise _Refused(SW_COMMAND_ABORTED)
        if len(data) != 32:
            raise _Refused(SW_LENGTH_ERROR)
        key = self.keys[pending.key_no]
        plain = aes_cbc_decrypt(key, bytes(16), data)
        rnd_a, rnd_b_rotated = plain[:16], plain[16:]
        if rnd_b_rotated != rotate_left(pending.rnd_b):
            raise _Refused(SW_AUTHENTICATION_ERROR)
        ti = self.random_bytes(4)
        reply = aes_cbc_encrypt(key, bytes(16), ti + rotate_left(rnd_a) + bytes(12))
        enc_key, mac_key = session_keys(key, rnd_a, pending.rnd_b)
        self.session = SecureChannel(enc_key, mac_key, ti, counter=0, key_no=pending.key_no)
        return reply + SW_NATIVE_OK

    def _authenticate_first(self, data: bytes) -> bytes:
        self.session = None
        if len(data) < 2 or len(data) != 2 + data[1]:
            raise _Refused(SW_LENGTH_ERROR)
        key_no = data[0]
        if key_no >= KEY_COUNT:
            raise _Refused(SW_NO_SUCH_KEY)
        rnd_b = self.random_bytes(16)
        self.pending_auth = _PendingAuth(key_no, rnd_b)
        return aes_cbc_encrypt(self.keys[key_no], bytes(16), rnd_b) + SW_ADDITIONAL_FRAME

    # --- secure messaging helpers ------------------------------------------------------------

    def _require_session(self) -> SecureChannel:
        if self.session is None:
            raise _Refused(SW_PERMISSION_DENIED)
        return self.session

    def _unwrap_command(
        self, ins: int, data: bytes, header_length: int, mode: CommMode
    ) -> tuple[bytes, bytes]:
        """(header, plain data) of a command in ``mode``; 91 1E on a wrong MAC or padding."""
        if len(data) < header_length:
            raise _Refused(SW_LENGTH_ERROR)
        if mode is CommMode.PLAIN:
            return data[:header_length], data[header_length:]
        session = self._require_session()
        if len(data) < header_length + 8:
            raise _Refused(SW_LENGTH_ERROR)
        header, body, mac = data[:header_length], data[header_length:-8], data[-8:]
        if session.command_mac(ins, header, body) != mac:
            raise _Refused(SW_INTEGRITY_ERROR)
        if mode is CommMode.FULL and body:
            try:
                body = session.decrypt_command_data(body)
            except SecureMessagingError:
                raise _Refused(SW_INTEGRITY_ERROR) from None
        return header, body

    def _respond(self, mode: CommMode, data: bytes = b"") -> bytes:
        """A success response in ``mode``; in a session, CmdCtr advances first."""
        session = self.session
        if session is None:
            return data + SW_NATIVE_OK
        session.advance()
        if mode is CommMode.PLAIN:
            return data + SW_NATIVE_OK
        body = session.encrypt_response_data(data) if mode is CommMode.FULL and data else data
        return body + session.response_mac(0x00, body) + SW_NATIVE_OK

    def _file(self, file_no: int) -> _File:
        file = self.files.get(file_no)
        if file is None:
            raise _Refused(SW_FILE_NOT_FOUND)
        return file

    def _allowed(self, condition: int) -> bool:
        if condition == ACCESS_FREE:
            return True
        return self.session is not None and self.session.key_no == condition

    # --- the commands ------------------------------------------------------------------------

    def _get_card_uid(self, data: bytes) -> bytes:
        self._unwrap_command(Ins.GET_CARD_UID, data, 0, CommMode.FULL)
        return self._respond(CommMode.FULL, self.uid)

    def _get_file_settings(self, data: bytes) -> bytes:
        mode = CommMode.PLAIN if self.session is None else CommMode.MAC
        header, rest = self._unwrap_command(Ins.GET_FILE_SETTINGS, data, 1, mode)
        if rest:
            raise _Refused(SW_LENGTH_ERROR)
        file = self._file(header[0])
        settings = file.settings
        change = settings.change_bytes()
        reply = bytes((0x00,)) + change[:3] + u24(len(file.data)) + change[3:]
        return self._respond(mode, reply)

    def _change_file_settings(self, data: bytes) -> bytes:
        header, plain = self._unwrap_command(Ins.CHANGE_FILE_SETTINGS, data, 1, CommMode.FULL)
        file = self._file(header[0])
        if not self._allowed(file.settings.access.change):
            raise _Refused(SW_PERMISSION_DENIED)
        try:
            settings = parse_change_file_settings(plain, len(file.data))
        except ValueError:
            raise _Refused(SW_PARAMETER_ERROR) from None
        if settings.sdm is not None and header[0] != NDEF_FILE_NO:
            raise _Refused(SW_PARAMETER_ERROR)
        file.settings = settings
        self.counter_bumped = False
        return self._respond(CommMode.MAC)

    def _change_key(self, data: bytes) -> bytes:
        session = self._require_session()
        header, plain = self._unwrap_command(Ins.CHANGE_KEY, data, 1, CommMode.FULL)
        key_no = header[0] & 0x0F
        if key_no >= KEY_COUNT:
            raise _Refused(SW_NO_SUCH_KEY)
        if session.key_no != 0:  # the application's ChangeKey access is key 0
            raise _Refused(SW_PERMISSION_DENIED)
        if key_no == session.key_no:
            if len(plain) != 17:
                raise _Refused(SW_LENGTH_ERROR)
            self.keys[key_no], self.key_versions[key_no] = plain[:16], plain[16]
            self.session = None  # the session's key changed: it ends, the answer has no MAC
            return SW_NATIVE_OK
        if len(plain) != 21:
            raise _Refused(SW_LENGTH_ERROR)
        new_key = bytes(a ^ b for a, b in zip(plain[:16], self.keys[key_no], strict=True))
        if crc32_nxp(new_key) != plain[17:21]:
            raise _Refused(SW_INTEGRITY_ERROR)
        self.keys[key_no], self.key_versions[key_no] = new_key, plain[16]
        return self._respond(CommMode.MAC)

    def _write_data(self, data: bytes) -> bytes:
        if len(data) < 7:
            raise _Refused(SW_LENGTH_ERROR)
        file = self._file(data[0])
        access = file.settings.access
        free = ACCESS_FREE in (access.write, access.read_write)
        mode = CommMode.PLAIN if free else file.settings.comm_mode
        if not free and not (self._allowed(access.write) or self._allowed(access.read_write)):
            raise _Refused(SW_PERMISSION_DENIED)
        header, plain = self._unwrap_command(Ins.WRITE_DATA, data, 7, mode)
        offset, length = from_u24(header[1:4]), from_u24(header[4:7])
        if length != len(plain) or length == 0:
            raise _Refused(SW_LENGTH_ERROR)
        if offset + length > len(file.data):
            raise _Refused(SW_BOUNDARY_ERROR)
        file.data[offset : offset + length] = plain
        return self._respond(CommMode.PLAIN if mode is CommMode.PLAIN else CommMode.MAC)


def _native_data(apdu: bytes) -> bytes:
    """The data field of a native command APDU (``90 INS 00 00 [Lc data] 00``)."""
    if len(apdu) == 5:
        return b""
    if len(apdu) < 6 or apdu[4] != len(apdu) - 6 or apdu[-1] != 0:
        raise _Refused(SW_LENGTH_ERROR)
    return apdu[5:-1]
