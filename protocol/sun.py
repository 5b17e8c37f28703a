"""Genuine wristbands (1.1): NTAG 424 DNA Secure Unique NFC messages, and the AES they need.

PROTOCOL.md "Genuine wristbands". Pure: bytes and hex in, results out; both sides use it without
crossing the boundary — the cloud verifies (``SunVerifier``), the virtual wristband and the
simulated reader produce messages (``sun_message``), provisioning derives the keys it writes
(``CardKeys``). The EV2 secure messaging of provisioning is protocol/ntag424.py, built on the AES
primitives here (this module is the only one of the two that imports ``cryptography``).

Keys, from the deployment's 16-byte master key with AES-CMAC (RFC 4493) as the KDF:
- ``K_meta = CMAC(master, 01 ‖ "festival-sdm-meta")``: decrypts ``picc_data``, the same everywhere;
- ``K_file(uid) = CMAC(master, 02 ‖ uid)``: the SDM file-read key that MACs, one per wristband;
- ``K_app(uid) = CMAC(master, 00 ‖ uid)``: the application master key written at provisioning.

The message: ``picc_data`` = AES-CBC(K_meta, IV 0) of ``C7 ‖ uid ‖ SDMReadCtr (3 bytes LE) ‖ 5
padding bytes``; ``cmac`` = the odd-indexed bytes of ``CMAC(K_ses, empty)`` with
``K_ses = CMAC(K_file(uid), 3C C3 00 01 00 80 ‖ uid ‖ SDMReadCtr)`` (AN12196 §3.4, with the MAC
input offset equal to the MAC offset, i.e. nothing of the URL itself is MACed).

Speed (DESIGN.md: ≤ 50 µs per request on one core): with OpenSSL behind it, building a cipher or
CMAC context costs far more than one AES block, so the verifier keeps long-lived ECB contexts for
the two fixed keys (the master key, K_meta) and builds only the two CMAC contexts whose key is
per wristband (K_file(uid), K_ses). bench/bench_sun.py measures it.

The counter rule (fresh counters, PROTOCOL.md) needs the ledger's memory of accepted counters:
the verifier returns the counter and the caller decides (``SunFailure.STALE_COUNTER`` is there
for it to report with the others).
"""

from __future__ import annotations

import hmac
import re
import urllib.parse
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from protocol.limits import CARD_SUN_CMAC_PATTERN, CARD_SUN_PICC_DATA_PATTERN, SUN_COUNTER_MAX

AES_BLOCK_BYTES: Final = 16
AES_KEY_BYTES: Final = 16
MASTER_KEY_HEX_LENGTH: Final = 32
SUN_UID_BYTES: Final = 7
SUN_COUNTER_BYTES: Final = 3
PICC_DATA_TAG: Final = 0xC7  # "UID and SDMReadCtr mirrored", 7-byte UID (NT4H2421Gx §9.3.5)
PICC_DATA_HEX_LENGTH: Final = 32
SUN_CMAC_HEX_LENGTH: Final = 16
PICC_DATA_PATTERN: Final = CARD_SUN_PICC_DATA_PATTERN
SUN_CMAC_PATTERN: Final = CARD_SUN_CMAC_PATTERN
SUN_UID_PATTERN: Final = re.compile(r"\A[0-9A-F]{14}\Z")

_META_LABEL: Final = b"\x01festival-sdm-meta"
_FILE_PREFIX: Final = b"\x02"
_APP_PREFIX: Final = b"\x00"
_SDM_SESSION_MAC_PREFIX: Final = bytes.fromhex("3CC300010080")
_ZERO_BLOCK: Final = bytes(AES_BLOCK_BYTES)
_RB: Final = 0x87  # RFC 4493's R_128
_ISO_PADDING: Final = b"\x80" + bytes(AES_BLOCK_BYTES - 1)


# --- AES and AES-CMAC -----------------------------------------------------------------------


def _check_key(key: bytes) -> None:
    if type(key) is not bytes or len(key) != AES_KEY_BYTES:
        raise ValueError("an AES-128 key is 16 bytes")


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (RFC 4493, NIST SP 800-38B), the full 16 bytes."""
    _check_key(key)
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def truncate_mac(mac: bytes) -> bytes:
    """NXP's 8-byte MAC: the odd-indexed bytes 1, 3, …, 15 of a 16-byte CMAC (AN12196)."""
    return mac[1::2]


def _ecb(key: bytes) -> Cipher[modes.ECB]:
    """The raw block cipher. ECB is never used here to encrypt data: it computes single blocks
    (EV2 IVs, CMAC subkeys and tags, the one-block PICC data, which is CBC with a zero IV)."""
    _check_key(key)
    return Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 - single blocks, see above


def aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """AES of whole blocks, each on its own (IV derivation of EV2 secure messaging)."""
    encryptor = _ecb(key).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def aes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CBC of whole blocks, no padding (the callers pad as NXP says)."""
    _check_key(key)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def aes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CBC decryption of whole blocks, no padding removed."""
    _check_key(key)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def iso_pad(data: bytes) -> bytes:
    """ISO/IEC 9797-1 padding method 2 (80 00 …), always at least one byte, to whole blocks."""
    return data + _ISO_PADDING[: AES_BLOCK_BYTES - len(data) % AES_BLOCK_BYTES]


def iso_unpad(data: bytes) -> bytes:
    """Undo ``iso_pad``; ValueError when the padding is not there."""
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80") or len(data) - len(stripped) >= AES_BLOCK_BYTES:
        raise ValueError("no ISO/IEC 9797-1 method 2 padding")
    return stripped[:-1]


def _double(block: bytes) -> bytes:
    value = int.from_bytes(block, "big") << 1
    if value >> 128:
        value = (value & ((1 << 128) - 1)) ^ _RB
    return value.to_bytes(AES_BLOCK_BYTES, "big")


def _xor(left: bytes, right: bytes) -> bytes:
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(len(left), "big")


class _FixedKeyCmac:
    """AES-CMAC of messages of at most one block under one key, with the key's ECB context and
    subkeys computed once: a tag costs one AES block instead of a new OpenSSL context."""

    __slots__ = ("_encrypt", "_k1", "_k2")

    def __init__(self, key: bytes) -> None:
        self._encrypt = _ecb(key).encryptor().update
        k1 = _double(self._encrypt(_ZERO_BLOCK))
        self._k1 = k1
        self._k2 = _double(k1)

    def tag(self, data: bytes) -> bytes:
        if len(data) == AES_BLOCK_BYTES:
            return self._encrypt(_xor(data, self._k1))
        if len(data) > AES_BLOCK_BYTES:
            raise ValueError("a fixed-key CMAC here takes at most one block")
        return self._encrypt(_xor(iso_pad(data), self._k2))


# --- keys -----------------------------------------------------------------------------------


def parse_master_key(text: str) -> bytes:
    """The master key file's content (32 hex digits, surrounding whitespace allowed) as bytes;
    ValueError on anything else (the message never quotes the content)."""
    stripped = text.strip()
    if len(stripped) != MASTER_KEY_HEX_LENGTH or re.fullmatch(r"[0-9A-Fa-f]+", stripped) is None:
        raise ValueError("a card master key is 32 hex digits")
    return bytes.fromhex(stripped)


def _uid_bytes(uid: bytes | str) -> bytes:
    if isinstance(uid, str):
        if SUN_UID_PATTERN.match(uid) is None:
            raise ValueError("a genuine wristband's UID is 14 upper-case hex digits")
        return bytes.fromhex(uid)
    if type(uid) is not bytes or len(uid) != SUN_UID_BYTES:
        raise ValueError("a genuine wristband's UID is 7 bytes")
    return uid


@dataclass(frozen=True, slots=True)
class CardKeys:
    """A wristband's three keys as provisioning writes them (PROTOCOL.md "Keys")."""

    app: bytes  # key 0: the application master key
    meta: bytes  # key 1: SDMMetaRead (decrypts picc_data)
    file: bytes  # key 2: SDMFileRead (the SUN MAC)


class CardKeyDerivation:
    """The deployment's key derivation from its master key (cached contexts: one AES block per
    derived key)."""

    __slots__ = ("_master", "meta_key")

    def __init__(self, master_key: bytes) -> None:
        self._master = _FixedKeyCmac(master_key)
        self.meta_key: bytes = aes_cmac(master_key, _META_LABEL)  # 18 bytes: the general CMAC

    def file_key(self, uid: bytes | str) -> bytes:
        return self._master.tag(_FILE_PREFIX + _uid_bytes(uid))

    def app_key(self, uid: bytes | str) -> bytes:
        return self._master.tag(_APP_PREFIX + _uid_bytes(uid))

    def card_keys(self, uid: bytes | str) -> CardKeys:
        return CardKeys(app=self.app_key(uid), meta=self.meta_key, file=self.file_key(uid))


# --- the message ----------------------------------------------------------------------------


def sdm_session_mac_key(file_key: bytes, uid: bytes, counter: int) -> bytes:
    """SesSDMFileReadMACKey (AN12196 §3.4.2): CMAC(K_file, 3C C3 00 01 00 80 ‖ uid ‖ ctr LE)."""
    return aes_cmac(
        file_key, _SDM_SESSION_MAC_PREFIX + uid + counter.to_bytes(SUN_COUNTER_BYTES, "little")
    )


def sdm_mac(file_key: bytes, uid: bytes, counter: int, mac_input: bytes = b"") -> bytes:
    """The 8-byte SDMMAC over ``mac_input`` (the file bytes between SDMMACInputOffset and
    SDMMACOffset; empty in our template)."""
    return truncate_mac(aes_cmac(sdm_session_mac_key(file_key, uid, counter), mac_input))


def encrypt_picc_data(meta_key: bytes, uid: bytes, counter: int, padding: bytes) -> bytes:
    """The wristband's side: PICCData = AES-CBC(K_meta, 0) of C7 ‖ uid ‖ ctr ‖ 5 padding bytes."""
    if len(padding) != AES_BLOCK_BYTES - 1 - SUN_UID_BYTES - SUN_COUNTER_BYTES:
        raise ValueError("PICCData has 5 padding bytes")
    plain = bytes((PICC_DATA_TAG,)) + uid + counter.to_bytes(SUN_COUNTER_BYTES, "little") + padding
    return aes_cbc_encrypt(meta_key, _ZERO_BLOCK, plain)


@dataclass(frozen=True, slots=True)
class SunMessage:
    """What a genuine wristband mirrors into its URL: upper-case hex, as on the wire."""

    picc_data: str
    cmac: str


def sun_message(
    meta_key: bytes, file_key: bytes, uid: bytes, counter: int, padding: bytes = bytes(5)
) -> SunMessage:
    """The message a wristband with these keys gives at ``counter`` (the virtual wristband and
    the simulated reader; a real band computes it itself)."""
    if not 0 <= counter <= SUN_COUNTER_MAX:
        raise ValueError("SDMReadCtr is 3 bytes")
    picc = encrypt_picc_data(meta_key, uid, counter, padding)
    mac = sdm_mac(file_key, uid, counter)
    return SunMessage(picc_data=picc.hex().upper(), cmac=mac.hex().upper())


class SunFailure(StrEnum):
    """Why a SUN message does not prove a genuine wristband (metrics label these)."""

    MISSING = "missing"  # no card_sun (a UID-only card, a clone)
    MALFORMED = "malformed"  # not 32 + 16 upper-case hex, or a UID the scheme cannot carry
    NOT_OURS = "not_ours"  # picc_data does not decrypt to the tag byte C7 under K_meta
    WRONG_UID = "wrong_uid"  # decrypts, but names another wristband than card_uid
    BAD_MAC = "bad_mac"  # the cmac does not verify under that UID's key
    STALE_COUNTER = "stale_counter"  # verified, but the caller's counter rule refuses it


class SunError(Exception):
    """A SUN message that does not verify; ``reason`` says which check failed."""

    def __init__(self, reason: SunFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class VerifiedSun:
    """A SUN message that verified: the wristband's UID (upper-case hex) and its SDMReadCtr."""

    uid: str
    counter: int


class SunVerifier:
    """The cloud's check of one SUN message (PROTOCOL.md "The check", without the counter rule).

    Built once per process from the master key; ``verify`` is thread-safe only per instance
    and thread (the cached OpenSSL contexts are not shared across threads safely): build one per
    worker thread.
    """

    __slots__ = ("_decrypt_meta", "_derive", "meta_key")

    def __init__(self, master_key: bytes) -> None:
        self._derive = CardKeyDerivation(master_key)
        self.meta_key = self._derive.meta_key
        # CBC with a zero IV over one block is ECB: one long-lived context for K_meta.
        self._decrypt_meta = _ecb(self.meta_key).decryptor().update

    def decrypt_picc_data(self, picc_data: str) -> tuple[bytes, int]:
        """The UID and counter inside ``picc_data`` (hex); SunError MALFORMED / NOT_OURS."""
        if type(picc_data) is not str or PICC_DATA_PATTERN.match(picc_data) is None:
            raise SunError(SunFailure.MALFORMED, "picc_data must be 32 upper-case hex digits")
        plain = self._decrypt_meta(bytes.fromhex(picc_data))
        if plain[0] != PICC_DATA_TAG:
            raise SunError(SunFailure.NOT_OURS, "picc_data is not this deployment's wristband")
        uid = plain[1 : 1 + SUN_UID_BYTES]
        counter = int.from_bytes(plain[1 + SUN_UID_BYTES : 11], "little")
        return uid, counter

    def verify(self, card_uid: str, picc_data: str | None, cmac: str | None) -> VerifiedSun:
        """Verify a request's ``card_sun`` for ``card_uid``; raise SunError with the reason.

        Checks, in this order: present; well-formed; decrypts under K_meta with tag C7; names
        ``card_uid``; its cmac verifies under K_file(uid) (compared in constant time)."""
        if picc_data is None or cmac is None:
            raise SunError(SunFailure.MISSING, "no SUN message: not a genuine wristband")
        if type(cmac) is not str or SUN_CMAC_PATTERN.match(cmac) is None:
            raise SunError(SunFailure.MALFORMED, "cmac must be 16 upper-case hex digits")
        if type(card_uid) is not str or SUN_UID_PATTERN.match(card_uid) is None:
            raise SunError(SunFailure.MALFORMED, "a genuine wristband has a 7-byte UID")
        if type(picc_data) is not str or PICC_DATA_PATTERN.match(picc_data) is None:
            raise SunError(SunFailure.MALFORMED, "picc_data must be 32 upper-case hex digits")
        plain = self._decrypt_meta(bytes.fromhex(picc_data))
        if plain[0] != PICC_DATA_TAG:
            raise SunError(SunFailure.NOT_OURS, "picc_data is not this deployment's wristband")
        uid = plain[1:8]
        if uid.hex().upper() != card_uid:
            raise SunError(SunFailure.WRONG_UID, "the SUN message names another wristband")
        # sdm_mac, inlined on the hot path: the counter's bytes straight from the plaintext.
        session = CMAC(algorithms.AES(self._derive.file_key(uid)))
        session.update(_SDM_SESSION_MAC_PREFIX + plain[1:11])
        mac = CMAC(algorithms.AES(session.finalize()))
        if not hmac.compare_digest(mac.finalize()[1::2], bytes.fromhex(cmac)):
            raise SunError(SunFailure.BAD_MAC, "the SUN message's MAC does not verify")
        return VerifiedSun(uid=card_uid, counter=int.from_bytes(plain[8:11], "little"))


def sun_from_url(url: str) -> SunMessage | None:
    """The SUN message in a wristband URL (``…/t?picc_data=…&cmac=…``), or None when the URL
    carries none (each exactly once, upper-case hex of the right length: anything else is not a
    SUN message and the request goes without one, for the cloud to judge)."""
    query = urllib.parse.urlsplit(url).query
    try:
        fields = urllib.parse.parse_qs(query, strict_parsing=True, max_num_fields=8)
    except ValueError:
        return None
    picc = fields.get("picc_data", [])
    mac = fields.get("cmac", [])
    if len(picc) != 1 or len(mac) != 1:
        return None
    if PICC_DATA_PATTERN.match(picc[0]) is None or SUN_CMAC_PATTERN.match(mac[0]) is None:
        return None
    return SunMessage(picc_data=picc[0], cmac=mac[0])
