"""Programming genuine wristbands (issue 15 §2): a blank NTAG 424 DNA becomes a SUN wristband.

``program_wristband(transmit, master_key, portal_url)`` does one tag over any APDU transport (a
function ``transmit(apdu) -> response``): the PC/SC adapter (cloud/card_reader.py) for
`festival-cloud card program`, the virtual tag's ``answer`` in tests. Per tag:

1. GetVersion: an NTAG 424 DNA, or ``NOT_NTAG424``;
2. SELECT the NDEF application, AuthenticateEV2First with key 0 = the factory key (zeros). If
   that is refused, the tag was programmed before: authenticated with *our* K_app(uid) it is
   ours (it is read back and verified like a new one, ``already_programmed``); otherwise
   ``FOREIGN_KEYS`` and the tag is left as it is;
3. GetCardUID (CommMode.FULL: the UID the keys are derived from);
4. WriteData of the NDEF file: one URI record, PROTOCOL.md's URL template with zeros where the tag
   mirrors (in chunks of ``WRITE_CHUNK_BYTES``);
5. ChangeFileSettings of the NDEF file: read free, write/change key 0, SDM with encrypted PICC data
   (SDMMetaRead key 1) and the SDMMAC (SDMFileRead key 2) at the template's offsets, the MAC input
   empty;
6. ChangeKey 1 → K_meta, 2 → K_file(uid), and last 0 → K_app(uid) (that ends the session); a key
   that already holds its target (a tag removed midway and presented again) is recognised by the
   tag's integrity error and done again from that value;
7. read back like a kiosk and verify the SUN message with the master key.

Any failure is a ``ProvisioningError`` with a ``kind`` and a sentence for the operator; a tag
taken away midway is ``REMOVED`` and can simply be presented again.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

from protocol.ntag424 import (
    ACCESS_FREE,
    FACTORY_KEY,
    KEY_APP,
    KEY_SDM_FILE,
    KEY_SDM_META,
    NDEF_FILE_NO,
    SW_ADDITIONAL_FRAME,
    SW_AUTHENTICATION_ERROR,
    SW_INTEGRITY_ERROR,
    SW_NATIVE_OK,
    SW_OK,
    AccessRights,
    CommMode,
    FileSettings,
    GetVersionReply,
    Ins,
    NativeStatusError,
    SdmSettings,
    SecureChannel,
    SecureMessagingError,
    TagCommunicationError,
    TagReadError,
    Transmit,
    crc32_nxp,
    native_apdu,
    ndef_template,
    read_ndef_url,
    rotate_left,
    select_application_apdu,
    session_keys,
    status_text,
    u24,
)
from protocol.sun import (
    CardKeyDerivation,
    SunError,
    SunVerifier,
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    sun_from_url,
)

if TYPE_CHECKING:
    from cloud.settings import CloudSettings

WRITE_CHUNK_BYTES: Final = 128
KEY_VERSION_PROGRAMMED: Final = 0x01


class ProvisioningFailure(StrEnum):
    NOT_NTAG424 = "not_ntag424"
    FOREIGN_KEYS = "foreign_keys"
    REMOVED = "removed"
    TAG_ERROR = "tag_error"
    VERIFY_FAILED = "verify_failed"
    BAD_TEMPLATE = "bad_template"


class ProvisioningError(Exception):
    def __init__(self, kind: ProvisioningFailure, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Programmed:
    """A wristband that reads back a valid SUN message: its UID and the counter it gave."""

    uid: str
    counter: int
    already_programmed: bool


def get_version(transmit: Transmit) -> GetVersionReply:
    """GetVersion's three frames; NOT_NTAG424 when the tag does not answer it like one."""
    frames: list[bytes] = []
    apdu = native_apdu(Ins.GET_VERSION)
    for expected in (SW_ADDITIONAL_FRAME, SW_ADDITIONAL_FRAME, SW_NATIVE_OK):
        response = transmit(apdu)
        if response[-2:] != expected:
            raise ProvisioningError(
                ProvisioningFailure.NOT_NTAG424,
                f"not an NTAG 424 DNA (GetVersion answered {status_text(response[-2:])})",
            )
        frames.append(response[:-2])
        apdu = native_apdu(Ins.ADDITIONAL_FRAME)
    reply = GetVersionReply(hardware=frames[0], software=frames[1], production=frames[2])
    if not reply.is_ntag424:
        raise ProvisioningError(
            ProvisioningFailure.NOT_NTAG424,
            f"not an NTAG 424 DNA (hardware version {reply.hardware.hex().upper()})",
        )
    return reply


def authenticate(
    transmit: Transmit,
    key_no: int,
    key: bytes,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> SecureChannel | None:
    """AuthenticateEV2First with ``key``: the session, or None when the tag refuses the key
    (91 AE). Other refusals are TAG_ERROR."""
    response = transmit(native_apdu(Ins.AUTHENTICATE_EV2_FIRST, bytes((key_no, 0))))
    if response[-2:] != SW_ADDITIONAL_FRAME or len(response) != 18:
        raise _tag_error("AuthenticateEV2First", response)
    rnd_b = aes_cbc_decrypt(key, bytes(16), response[:16])
    rnd_a = random_bytes(16)
    part2 = aes_cbc_encrypt(key, bytes(16), rnd_a + rotate_left(rnd_b))
    response = transmit(native_apdu(Ins.ADDITIONAL_FRAME, part2))
    if response[-2:] == SW_AUTHENTICATION_ERROR:
        return None
    if response[-2:] != SW_NATIVE_OK or len(response) != 34:
        raise _tag_error("AuthenticateEV2First", response)
    plain = aes_cbc_decrypt(key, bytes(16), response[:32])
    ti, rnd_a_rotated = plain[:4], plain[4:20]
    if rnd_a_rotated != rotate_left(rnd_a):
        # The tag did not prove it knows the key: not a tag we may trust with new keys.
        return None
    enc_key, mac_key = session_keys(key, rnd_a, rnd_b)
    return SecureChannel(enc_key, mac_key, ti, counter=0, key_no=key_no)


def _tag_error(step: str, response: bytes) -> ProvisioningError:
    return ProvisioningError(
        ProvisioningFailure.TAG_ERROR, f"{step} failed: {status_text(response[-2:])}"
    )


def _command(
    transmit: Transmit,
    session: SecureChannel,
    ins: int,
    mode: CommMode,
    response_mode: CommMode,
    header: bytes = b"",
    data: bytes = b"",
    *,
    step: str,
) -> bytes:
    response = transmit(session.wrap(ins, mode, header, data))
    try:
        return session.unwrap(response, response_mode)
    except NativeStatusError as error:
        raise _StatusRefused(step, error.status_word) from None
    except SecureMessagingError as error:
        raise ProvisioningError(
            ProvisioningFailure.TAG_ERROR, f"{step}: the tag's answer does not verify ({error})"
        ) from None


class _StatusRefused(Exception):
    def __init__(self, step: str, status_word: bytes) -> None:
        super().__init__(f"{step} failed: {status_text(status_word)}")
        self.step = step
        self.status_word = status_word

    def as_error(self) -> ProvisioningError:
        return ProvisioningError(ProvisioningFailure.TAG_ERROR, str(self))


def _select_application(transmit: Transmit) -> None:
    response = transmit(select_application_apdu())
    if response[-2:] != SW_OK:
        raise ProvisioningError(
            ProvisioningFailure.NOT_NTAG424,
            f"no NDEF application on this tag ({status_text(response[-2:])})",
        )


def _change_key(
    transmit: Transmit,
    session: SecureChannel,
    key_no: int,
    new_key: bytes,
    old_key: bytes,
) -> None:
    """ChangeKey of a key other than the session's (NT4H2421Gx §10.6.1): the new key XOR the old
    one, the key version, CRC32 of the new key; FULL."""
    xored = bytes(a ^ b for a, b in zip(new_key, old_key, strict=True))
    data = xored + bytes((KEY_VERSION_PROGRAMMED,)) + crc32_nxp(new_key)
    _command(
        transmit,
        session,
        Ins.CHANGE_KEY,
        CommMode.FULL,
        CommMode.MAC,
        bytes((key_no,)),
        data,
        step=f"ChangeKey {key_no}",
    )


def _change_own_key(transmit: Transmit, session: SecureChannel, new_key: bytes) -> None:
    """ChangeKey of the session's own key: the new key and its version; the tag ends the session
    and answers 91 00 without a MAC."""
    data = new_key + bytes((KEY_VERSION_PROGRAMMED,))
    response = transmit(session.wrap(Ins.CHANGE_KEY, CommMode.FULL, bytes((session.key_no,)), data))
    if response != SW_NATIVE_OK:
        raise _tag_error(f"ChangeKey {session.key_no}", response)


def read_back(transmit: Transmit, verifier: SunVerifier, uid: str) -> int:
    """Read the tag like a kiosk and verify its SUN message; the counter it gave."""
    try:
        url = read_ndef_url(transmit)
    except TagReadError as error:
        raise ProvisioningError(
            ProvisioningFailure.VERIFY_FAILED, f"reading it back failed: {error}"
        ) from None
    message = sun_from_url(url)
    if message is None:
        raise ProvisioningError(
            ProvisioningFailure.VERIFY_FAILED, "reading it back gave no SUN message"
        )
    try:
        return verifier.verify(uid, message.picc_data, message.cmac).counter
    except SunError as error:
        raise ProvisioningError(
            ProvisioningFailure.VERIFY_FAILED,
            f"its SUN message does not verify ({error.reason.value}): not ours",
        ) from None


def program_wristband(
    transmit: Transmit,
    master_key: bytes,
    portal_url: str,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> Programmed:
    """Program one tag (see the module docstring); ProvisioningError on any failure."""
    try:
        template = ndef_template(portal_url)
    except ValueError as error:
        raise ProvisioningError(ProvisioningFailure.BAD_TEMPLATE, str(error)) from None
    derivation = CardKeyDerivation(master_key)
    verifier = SunVerifier(master_key)
    try:
        version = get_version(transmit)
        _select_application(transmit)
        session = authenticate(transmit, KEY_APP, FACTORY_KEY, random_bytes)
        if session is None:
            return _already_programmed(transmit, derivation, verifier, version, random_bytes)
        try:
            uid_bytes = _command(
                transmit,
                session,
                Ins.GET_CARD_UID,
                CommMode.FULL,
                CommMode.FULL,
                step="GetCardUID",
            )
            if len(uid_bytes) != 7:
                raise ProvisioningError(
                    ProvisioningFailure.NOT_NTAG424, "a genuine wristband has a 7-byte UID"
                )
            uid = uid_bytes.hex().upper()
            keys = derivation.card_keys(uid_bytes)
            _write_template(transmit, session, template.file_bytes)
            settings = FileSettings(
                CommMode.PLAIN,
                AccessRights(read=ACCESS_FREE, write=KEY_APP, read_write=KEY_APP, change=KEY_APP),
                SdmSettings(
                    meta_read_key=KEY_SDM_META,
                    file_read_key=KEY_SDM_FILE,
                    picc_data_offset=template.picc_data_offset,
                    mac_input_offset=template.mac_offset,
                    mac_offset=template.mac_offset,
                ),
            )
            _command(
                transmit,
                session,
                Ins.CHANGE_FILE_SETTINGS,
                CommMode.FULL,
                CommMode.MAC,
                bytes((NDEF_FILE_NO,)),
                settings.change_bytes(),
                step="ChangeFileSettings",
            )
            for key_no, new_key in ((KEY_SDM_META, keys.meta), (KEY_SDM_FILE, keys.file)):
                session = _change_key_from_either(transmit, session, key_no, new_key, random_bytes)
            _change_own_key(transmit, session, keys.app)
        except _StatusRefused as refused:
            raise refused.as_error() from None
        counter = read_back(transmit, verifier, uid)
        return Programmed(uid=uid, counter=counter, already_programmed=False)
    except TagCommunicationError as error:
        raise ProvisioningError(
            ProvisioningFailure.REMOVED,
            f"the tag went away midway ({error}): present it again",
        ) from None


def _write_template(transmit: Transmit, session: SecureChannel, data: bytes) -> None:
    """WriteData of the NDEF file from offset 0, in chunks. The factory file is written free
    (CommMode.PLAIN); a file a previous, interrupted run already set to key 0 is written with
    that key, also plain (its communication mode stays plain)."""
    for offset in range(0, len(data), WRITE_CHUNK_BYTES):
        chunk = data[offset : offset + WRITE_CHUNK_BYTES]
        header = bytes((NDEF_FILE_NO,)) + u24(offset) + u24(len(chunk))
        _command(
            transmit,
            session,
            Ins.WRITE_DATA,
            CommMode.PLAIN,
            CommMode.PLAIN,
            header,
            chunk,
            step="WriteData",
        )


def _change_key_from_either(
    transmit: Transmit,
    session: SecureChannel,
    key_no: int,
    new_key: bytes,
    random_bytes: Callable[[int], bytes],
) -> SecureChannel:
    """Change ``key_no`` from the factory key to ``new_key``; when the tag says the old key was
    not the factory one (91 1E: an earlier run was interrupted after this step), authenticate
    again and change it from ``new_key`` itself. The session to go on with."""
    try:
        _change_key(transmit, session, key_no, new_key, FACTORY_KEY)
        return session
    except _StatusRefused as refused:
        if refused.status_word != SW_INTEGRITY_ERROR:
            raise
    again = authenticate(transmit, KEY_APP, FACTORY_KEY, random_bytes)
    if again is None:
        raise ProvisioningError(
            ProvisioningFailure.TAG_ERROR, "the tag refused the factory key after ChangeKey"
        )
    try:
        _change_key(transmit, again, key_no, new_key, new_key)
    except _StatusRefused as refused:
        if refused.status_word == SW_INTEGRITY_ERROR:
            raise ProvisioningError(
                ProvisioningFailure.FOREIGN_KEYS,
                f"key {key_no} holds a key that is neither the factory's nor ours: left as it is",
            ) from None
        raise
    return again


def _already_programmed(
    transmit: Transmit,
    derivation: CardKeyDerivation,
    verifier: SunVerifier,
    version: GetVersionReply,
    random_bytes: Callable[[int], bytes],
) -> Programmed:
    """The factory key was refused: ours if K_app(uid) opens it (then verified by reading it
    back), else another deployment's (left untouched)."""
    uid_bytes = version.production[:7]
    foreign = ProvisioningError(
        ProvisioningFailure.FOREIGN_KEYS,
        "already programmed with other keys (not this deployment's): left as it is",
    )
    if len(uid_bytes) != 7 or not any(uid_bytes):
        raise foreign  # random ID on: we cannot derive its key without authenticating first
    _select_application(transmit)
    session = authenticate(transmit, KEY_APP, derivation.app_key(uid_bytes), random_bytes)
    if session is None:
        raise foreign
    uid = uid_bytes.hex().upper()
    counter = read_back(transmit, verifier, uid)
    return Programmed(uid=uid, counter=counter, already_programmed=True)


# --- the CLI verbs (cloud/cli.py) -----------------------------------------------------------


def card_master_keygen(args: argparse.Namespace, settings: CloudSettings) -> int:
    """`card master-keygen --out PATH`: a new master key file, 0600; never replaces one."""
    from cloud.keys import generate_card_master_key, save_card_master_key

    try:
        save_card_master_key(generate_card_master_key(), Path(args.out))
    except FileExistsError:
        print(f"festival-cloud: {args.out} exists; not replaced", file=sys.stderr)
        return 1
    print(
        f"card master key written to {args.out} (mode 0600): keep it where wristbands are "
        "programmed and in the cloud (CARD_MASTER_KEY_FILE), nowhere else"
    )
    return 0


def _master_key(settings: CloudSettings) -> bytes:
    from cloud.keys import load_card_master_key
    from cloud.settings import SettingsError

    settings.require("card_master_key_file")
    assert settings.card_master_key_file is not None
    try:
        return load_card_master_key(settings.card_master_key_file)
    except (OSError, ValueError) as error:
        raise SettingsError(f"CARD_MASTER_KEY_FILE: {error}") from None


@dataclass(frozen=True)
class Handled:
    """What `card program` did with one tag presented: programmed (with the portal PIN printed
    on it when registered), or not, and why."""

    programmed: Programmed | None
    pin: str | None = None
    created: bool = False
    failure: str | None = None

    def line(self) -> str:
        """The tag's stdout line: ``UID`` tab ``programmed|already programmed`` (tab ``PIN``
        when registered): what a wristband printer takes."""
        assert self.programmed is not None
        done = self.programmed
        state = "already programmed" if done.already_programmed else "programmed"
        return f"{done.uid}\t{state}" + (f"\t{self.pin}" if self.pin else "")


def handle_tag(
    transmit: Transmit,
    master_key: bytes,
    portal_url: str,
    register: Callable[[str], tuple[str, bool]] | None = None,
) -> Handled:
    """One tag presented to `card program`: programmed and read back (``program_wristband``),
    then, when ``register`` is given (``--register``), the card is registered with the cloud:
    created with balance 0 if unknown and given a fresh portal PIN, which ``register(uid)``
    stores (only its hash) and returns with whether the card was created. A tag that fails is
    reported and nothing is registered. The demo's wristbands go through this same function
    (cloud/demo_wristbands.py), with the virtual tag answering in-process instead of on pcscd."""
    try:
        done = program_wristband(transmit, master_key, portal_url)
    except ProvisioningError as error:
        return Handled(None, failure=error.message)
    if register is None:
        return Handled(done)
    from cloud.database import TransientDatabaseError

    try:
        pin, created = register(done.uid)
    except TransientDatabaseError as error:
        # Programmed and verified, only not registered: the operator gives it a PIN later.
        return Handled(
            done,
            failure=f"programmed but not registered (database unavailable: {error}); "
            f"register it with `festival-cloud card pin {done.uid}`",
        )
    return Handled(done, pin=pin, created=created)


def pin_registrar(
    settings: CloudSettings,
) -> tuple[Callable[[str], tuple[str, bool]], Callable[[], None]]:
    """``--register``: the function that creates the card and sets a fresh PIN (the owner's or
    festival_service's DATABASE_URL, like `card pin`), and the one that closes its engine."""
    from cloud.admin import _url
    from cloud.database import make_engine
    from cloud.portal import PortalStore, hash_pin, new_pin

    engine = make_engine(_url(settings), pool_size=1, application_name="festival-cloud")
    store = PortalStore(engine)

    def register(card_uid: str) -> tuple[str, bool]:
        pin = new_pin()
        created = store.set_pin_hash(card_uid, hash_pin(pin))
        return pin, created

    return register, engine.dispose


def card_program(args: argparse.Namespace, settings: CloudSettings) -> int:
    """`card program --reader NAME [--count N] [--register]`: program the wristbands presented
    on the PC/SC reader one after another; prints each UID (stdout: one line per programmed tag,
    ``UID`` tab ``programmed|already programmed``, with ``--register`` tab the portal PIN to
    print on the band), problems on stderr. Exit 0 when every tag handled was programmed, 1 when
    one failed, 2 without a reader (or, with ``--register``, without DATABASE_URL)."""
    master_key = _master_key(settings)
    portal_url = settings.festival_portal_url
    try:
        ndef_template(portal_url)
    except ValueError as error:
        print(f"festival-cloud: FESTIVAL_PORTAL_URL: {error}", file=sys.stderr)
        return 2
    try:
        from cloud.card_reader import ReaderUnavailable, serve_tags
    except ModuleNotFoundError as error:
        print(
            f"festival-cloud card program: needs {error.name} (pyscard): pip install pyscard",
            file=sys.stderr,
        )
        return 2
    register: Callable[[str], tuple[str, bool]] | None = None
    close: Callable[[], None] | None = None
    if args.register:
        register, close = pin_registrar(settings)
    failures = 0

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def handle(transmit: Transmit) -> None:
        nonlocal failures
        handled = handle_tag(transmit, master_key, portal_url, register)
        if handled.programmed is None:
            failures += 1
            say(f"tag not programmed: {handled.failure}")
            return
        if handled.failure is not None:
            failures += 1
            say(f"card {handled.programmed.uid}: {handled.failure}")
        if handled.created:
            say(f"card {handled.programmed.uid} registered with balance 0")
        print(handled.line(), flush=True)

    try:
        serve_tags(args.reader, handle, say=say, count=args.count)
    except ReaderUnavailable as error:
        say(f"festival-cloud card program: {error}")
        return 2
    finally:
        if close is not None:
            close()
    return 1 if failures else 0
