"""Ed25519 keys: generation, PEM PKCS#8 bytes, and base64url public keys.

Pure: bytes in, key objects out, and back. Reading and writing key *files* is I/O and belongs to
each side's adapter (device/keys.py for the kiosk, cloud/keys.py for the cloud); both hand the
file's bytes to ``private_key_from_pem``, write what ``private_key_pem`` returns, and judge a
file's mode by ``key_file_mode_problem``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x25519

# Re-exported: the key types of both sides are the protocol's (only protocol/ imports cryptography).
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey as Ed25519PrivateKey,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey as Ed25519PublicKey,
)

PUBLIC_KEY_BYTES: Final = 32
PUBLIC_KEY_B64_LENGTH: Final = 43
# A PEM Ed25519 private key is about 120 bytes; refuse anything absurd (key file readers read at
# most one byte more than this).
PRIVATE_KEY_PEM_BYTES_MAX: Final = 16 * 1024
# A private key file is its owner's alone (both sides create theirs so and refuse any other).
PRIVATE_KEY_FILE_MODE: Final = 0o600

_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE_OF: Final = {char: index for index, char in enumerate(_ALPHABET)}


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; raise ValueError on anything else.

    Rejects padding, whitespace and characters outside the base64url alphabet, an impossible
    length, and non-canonical text (unused trailing bits that are not zero), so that every
    byte string has exactly one encoding.
    """
    if not text.isascii():
        raise ValueError("base64url text must be ASCII")
    decoded = b64url_decode_bytes(text.encode("ascii"))
    if decoded is None:
        raise ValueError("not canonical unpadded base64url")
    return decoded


def b64url_decode_bytes(data: bytes) -> bytes | None:
    """Like ``b64url_decode`` for ASCII bytes, returning None instead of raising."""
    remainder = len(data) % 4
    if remainder == 1 or data.translate(None, _ALPHABET):
        return None
    if remainder:
        # The last character carries 4 (remainder 2) or 2 (remainder 3) unused bits.
        unused_mask = 0x0F if remainder == 2 else 0x03
        if _VALUE_OF[data[-1]] & unused_mask:
            return None
        data += b"=" * (4 - remainder)
    try:
        return base64.urlsafe_b64decode(data)
    except binascii.Error:  # pragma: no cover - excluded by the checks above
        return None


def generate_private_key() -> Ed25519PrivateKey:
    """A new random Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """``key`` as unencrypted PEM PKCS#8 (what ``openssl genpkey -algorithm ed25519`` writes)."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes, *, source: str = "key") -> Ed25519PrivateKey:
    """Parse an unencrypted PEM PKCS#8 Ed25519 private key; raise ValueError on anything else."""
    if len(data) > PRIVATE_KEY_PEM_BYTES_MAX:
        raise ValueError(f"{source}: too large to be a private key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError(f"{source}: encrypted private keys are not supported") from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ValueError(f"{source}: not a PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{source}: expected an Ed25519 private key, found {_key_kind(key)}")
    return key


def key_file_mode_problem(name: str, mode: int) -> str | None:
    """Why the private key file ``name``, of permission bits ``mode``, must not be used (anyone
    but its owner may read or write it), or None when its mode is 0600 or stricter."""
    if not mode & 0o077:
        return None
    return (
        f"{name} has mode {mode:04o}: it must be 0600, only its owner reads it (chmod 600 {name})"
    )


def _key_kind(key: object) -> str:
    kinds: tuple[tuple[type, str], ...] = (
        (rsa.RSAPrivateKey, "an RSA key"),
        (ec.EllipticCurvePrivateKey, "an EC key"),
        (dsa.DSAPrivateKey, "a DSA key"),
        (x25519.X25519PrivateKey, "an X25519 key"),
        (ed448.Ed448PrivateKey, "an Ed448 key"),
    )
    for kind, name in kinds:
        if isinstance(key, kind):
            return name
    return type(key).__name__


def public_key_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of the public key (a JWK's ``x``, decoded)."""
    public_key = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public_key.public_bytes(
        encoding=serialization.Encoding.Raw, format=serialization.PublicFormat.Raw
    )


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as base64url (no padding) of its raw 32 bytes: 43 characters."""
    return b64url_encode(public_key_raw(key))


def load_public_key_b64(text: str) -> Ed25519PublicKey:
    """Parse a public key written by ``public_key_b64``; raise ValueError on anything else."""
    if len(text) != PUBLIC_KEY_B64_LENGTH:
        raise ValueError(
            f"an Ed25519 public key is {PUBLIC_KEY_B64_LENGTH} base64url characters,"
            f" got {len(text)}"
        )
    raw = b64url_decode(text)
    assert len(raw) == PUBLIC_KEY_BYTES
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as error:  # pragma: no cover - OpenSSL accepts any 32 bytes today
        raise ValueError(f"not an Ed25519 public key ({error})") from None
