"""Staff PINs (issue 17 section 3; DESIGN.md `staff add`): made, hashed and checked here, never
stored or logged. The hash is scrypt from the standard library (hashlib: OpenSSL's), salted per
PIN, in the modular form ``scrypt$N$r$p$<salt>$<hash>`` (base64url, no padding) that revision
0024 stores in staff_members.pin_hash. The consumer checks a staff_login's PIN against it and
gives the ledger only the verdict; `staff add` and `staff pin` give the ledger only the hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Final

from cloud.limits import (
    STAFF_PIN_DIGITS,
    STAFF_PIN_HASH_BYTES,
    STAFF_PIN_SALT_BYTES,
    STAFF_PIN_SCRYPT_N,
    STAFF_PIN_SCRYPT_P,
    STAFF_PIN_SCRYPT_R,
)
from protocol.limits import STAFF_PIN_PATTERN

_SCHEME = "scrypt"
# scrypt needs 128 * N * r bytes; OpenSSL's default ceiling is 32 MiB
_MAXMEM = 64 * 1024 * 1024


def payload_hash_key(secret: bytes) -> bytes:
    """The key of ``keyed_payload_hash``, derived from a secret every consumer shares (the
    cloud signing key, as PEM): the same on every consumer and after a restart."""
    return hmac.new(secret, b"festival staff_login payload hash v1", hashlib.sha256).digest()


def keyed_payload_hash(key: bytes, payload_sha256: str) -> str:
    """What identifies a staff_login's payload in the ledger instead of its plain SHA-256: an
    HMAC of it under ``key`` (hex). The same bytes give the same value (the replay rule holds),
    but someone who reads the database cannot test guessed PINs against it without the key."""
    return hmac.new(key, bytes.fromhex(payload_sha256), hashlib.sha256).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_pin() -> str:
    """A fresh random PIN of STAFF_PIN_DIGITS digits (leading zeros kept)."""
    return f"{secrets.randbelow(10**STAFF_PIN_DIGITS):0{STAFF_PIN_DIGITS}d}"


def hash_pin(pin: str) -> str:
    """The stored form of ``pin`` (4-12 digits, PROTOCOL.md)."""
    if not STAFF_PIN_PATTERN.match(pin):
        raise ValueError("a PIN is 4 to 12 digits")
    salt = secrets.token_bytes(STAFF_PIN_SALT_BYTES)
    digest = _scrypt(pin, salt, STAFF_PIN_SCRYPT_N, STAFF_PIN_SCRYPT_R, STAFF_PIN_SCRYPT_P)
    return "$".join(
        (
            _SCHEME,
            str(STAFF_PIN_SCRYPT_N),
            str(STAFF_PIN_SCRYPT_R),
            str(STAFF_PIN_SCRYPT_P),
            _b64(salt),
            _b64(digest),
        )
    )


def verify_pin(pin: str, stored: str | None) -> bool:
    """Whether ``pin`` is the PIN ``stored`` was made from; False for anything malformed (a
    stored hash this module did not make, a PIN that is not 4-12 digits). Constant time in
    the digest comparison; the cost parameters are the stored ones, bounded."""
    if stored is None or not STAFF_PIN_PATTERN.match(pin):
        return False
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return False
    try:
        n, r, p = (int(part) for part in parts[1:4])
        salt, expected = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return False
    if not (2 <= n <= 2**17 and n & (n - 1) == 0 and 1 <= r <= 16 and 1 <= p <= 4):
        return False
    if len(expected) != STAFF_PIN_HASH_BYTES:
        return False
    return hmac.compare_digest(_scrypt(pin, salt, n, r, p), expected)


def _scrypt(pin: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        pin.encode("ascii"), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=STAFF_PIN_HASH_BYTES
    )


_REDACTED: Final = "[redacted]"


def redact_pin(payload: bytes) -> bytes:
    """A message as it may be kept (a dead letter): a JWS or JSON whose payload names a ``pin``
    has its value replaced by "[redacted]" (the header and signature kept, so the letter still
    shows what came); a message that names a pin and cannot be read is replaced entirely. The
    PIN of a staff_login that could not be accepted must not land in the database."""
    parts = payload.split(b".")
    if len(parts) != 3 and b"pin" not in payload:
        return payload
    try:
        if len(parts) == 3:
            document = json.loads(base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)))
            if isinstance(document, dict) and "pin" in document:
                document["pin"] = _REDACTED
                body = json.dumps(document, separators=(",", ":")).encode("utf-8")
                return b".".join((parts[0], base64.urlsafe_b64encode(body).rstrip(b"="), parts[2]))
            return payload
        document = json.loads(payload)
        if isinstance(document, dict) and "pin" in document:
            document["pin"] = _REDACTED
            return json.dumps(document, separators=(",", ":")).encode("utf-8")
        return payload
    except (ValueError, UnicodeDecodeError, RecursionError):
        if b"pin" in payload:
            return b'[redacted: an unreadable message naming a "pin"]'
        return payload
