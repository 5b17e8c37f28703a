"""The attendee's portal on the ledger's side (revision 0011): PINs, sessions, the lockout.

A PIN (6-12 of [A-Z0-9], printed on the wristband by its supplier, or set on site with
`festival-cloud card pin`) is stored only as a scrypt hash, computed here: the database never
sees a PIN. Its cost (PIN_SCRYPT_N, r, p in cloud/limits.py) keeps one check within 100 ms on the
API's machine (docs/benchmarks.md), and the parameters travel in the stored string, so raising
them later leaves the old hashes checkable.

A login has two halves around the slow check: `sp_portal_login_begin` (is the card locked, and
the hash; the attempt counts as a failure from now on) and `sp_portal_login_finish` (right: a
session; wrong: the failure stays, the fifth within the window locks the card). An unknown card,
or one without a PIN, is checked against a dummy hash of the same cost, so it answers the same,
in the same time, and is locked out the same way.

A session is 32 random bytes in the attendee's cookie; the database keeps their SHA-256 only (a
slow hash buys nothing against 256 random bits and would cost every page load). `PortalStore`
is the database adapter the API and the CLI share.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from cloud.database import Engine, text, translate_errors
from cloud.limits import (
    PIN_ALPHABET,
    PIN_LENGTH_GENERATED,
    PIN_LENGTH_MAX,
    PIN_LENGTH_MIN,
    PIN_SALT_BYTES,
    PIN_SCRYPT_KEY_BYTES,
    PIN_SCRYPT_MAXMEM_BYTES,
    PIN_SCRYPT_N,
    PIN_SCRYPT_P,
    PIN_SCRYPT_R,
    PORTAL_TOKEN_BYTES,
)
from protocol.limits import CARD_UID_PATTERN

PIN_PATTERN: Final = re.compile(rf"\A[A-Z0-9]{{{PIN_LENGTH_MIN},{PIN_LENGTH_MAX}}}\Z")
HASH_SCHEME: Final = "scrypt"
SessionKind = Literal["pin", "tap"]


def valid_pin(pin: object) -> bool:
    return isinstance(pin, str) and bool(PIN_PATTERN.match(pin))


def new_pin(length: int = PIN_LENGTH_GENERATED) -> str:
    """A fresh PIN for a band printed on site: uniformly random over the PIN alphabet."""
    assert PIN_LENGTH_MIN <= length <= PIN_LENGTH_MAX
    return "".join(secrets.choice(PIN_ALPHABET) for _ in range(length))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _scrypt(pin: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        pin.encode("ascii"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=PIN_SCRYPT_KEY_BYTES,
        maxmem=PIN_SCRYPT_MAXMEM_BYTES,
    )


def hash_pin(pin: str) -> str:
    """`scrypt$n$r$p$salt$key` (base64): what card_pins.pin_hash holds."""
    if not valid_pin(pin):
        raise ValueError(f"a PIN is {PIN_LENGTH_MIN}-{PIN_LENGTH_MAX} of [A-Z0-9]")
    salt = secrets.token_bytes(PIN_SALT_BYTES)
    key = _scrypt(pin, salt, PIN_SCRYPT_N, PIN_SCRYPT_R, PIN_SCRYPT_P)
    return f"{HASH_SCHEME}${PIN_SCRYPT_N}${PIN_SCRYPT_R}${PIN_SCRYPT_P}${_b64(salt)}${_b64(key)}"


# Checked when the card has no hash, so that an unknown card costs what a known one does. Its
# PIN is unknowable (random, never kept); built once, on first use.
_dummy_hash: str | None = None
_dummy_lock = threading.Lock()


def _dummy() -> str:
    global _dummy_hash
    with _dummy_lock:
        if _dummy_hash is None:
            _dummy_hash = hash_pin(new_pin(PIN_LENGTH_MAX))
        return _dummy_hash


def check_pin(pin: str, stored: str | None) -> bool:
    """True when `pin` is the one `stored` was made from. Always runs one scrypt of the stored
    (or the dummy) cost, also for a malformed PIN or hash: the time says nothing."""
    candidate = pin if valid_pin(pin) else "0" * PIN_LENGTH_MIN
    target = stored if stored is not None else _dummy()
    try:
        scheme, n, r, p, salt, key = target.split("$")
        if scheme != HASH_SCHEME:
            raise ValueError(scheme)
        expected = base64.b64decode(key, validate=True)
        computed = _scrypt(candidate, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except ValueError:
        _scrypt(candidate, b"\0" * PIN_SALT_BYTES, PIN_SCRYPT_N, PIN_SCRYPT_R, PIN_SCRYPT_P)
        return False
    return hmac.compare_digest(computed, expected) and stored is not None and valid_pin(pin)


def new_session_token() -> str:
    return secrets.token_urlsafe(PORTAL_TOKEN_BYTES)


def token_sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class LoginStart:
    allowed: bool
    retry_after_s: int
    pin_hash: str | None


@dataclass(frozen=True, slots=True)
class PortalSession:
    card_uid: str
    kind: SessionKind
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ImportResult:
    imported: int
    created: int


class PortalStore:
    """The portal's procedures (revision 0011) on one engine: festival_api's for the API,
    festival_service's (or the owner's) for the CLI's PIN verbs."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _one(self, sql: str, **params: object) -> Any:
        with translate_errors(), self._engine.begin() as connection:
            return connection.execute(text(sql), params).one()

    # --- the operator ------------------------------------------------------------------------

    def set_pin_hash(self, card_uid: str, pin_hash: str) -> bool:
        """Give a card a PIN (creating the card with balance 0); True when it was created."""
        if not CARD_UID_PATTERN.match(card_uid):
            raise ValueError("invalid card uid")
        row = self._one(
            "SELECT sp_portal_set_pin(:card_uid, :pin_hash, 'operator')",
            card_uid=card_uid,
            pin_hash=pin_hash,
        )
        return bool(row[0])

    def import_pin_hashes(self, rows: list[tuple[str, str]]) -> ImportResult:
        """Every (card_uid, pin_hash) in one transaction: all are stored or none."""
        for card_uid, _ in rows:
            if not CARD_UID_PATTERN.match(card_uid):
                raise ValueError(f"invalid card uid {card_uid!r}")
        document = json.dumps([{"card_uid": uid, "pin_hash": digest} for uid, digest in rows])
        row = self._one(
            "SELECT imported, created FROM sp_portal_import_pins(CAST(:rows AS jsonb))",
            rows=document,
        )
        return ImportResult(imported=int(row.imported), created=int(row.created))

    # --- the API -----------------------------------------------------------------------------

    def login_begin(self, card_uid: str, *, window_s: int, failures_max: int) -> LoginStart:
        row = self._one(
            "SELECT allowed, retry_after_s, pin_hash"
            "  FROM sp_portal_login_begin(:card_uid, :window_s, :failures_max)",
            card_uid=card_uid,
            window_s=window_s,
            failures_max=failures_max,
        )
        return LoginStart(bool(row.allowed), int(row.retry_after_s), row.pin_hash)

    def login_finish(
        self,
        card_uid: str,
        *,
        ok: bool,
        token: str | None,
        ttl_s: int,
        window_s: int,
        failures_max: int,
    ) -> datetime | None:
        """The session's expiry when `ok` (the session of `token` is open), else None."""
        row = self._one(
            "SELECT sp_portal_login_finish(:card_uid, :ok, :digest, :ttl_s, :window_s,"
            " :failures_max)",
            card_uid=card_uid,
            ok=ok,
            digest=token_sha256(token) if ok and token is not None else None,
            ttl_s=ttl_s,
            window_s=window_s,
            failures_max=failures_max,
        )
        expires_at: datetime | None = row[0]
        return expires_at

    def tap_login(
        self, card_uid: str, counter: int, *, token: str, ttl_s: int
    ) -> tuple[bool, datetime | None]:
        """(1.1) GET /t: accept a verified SUN message's counter (online rule) and open a `tap`
        session for the card (revision 0013). (False, None): a stale counter; (True, None):
        accepted, but the card does not exist yet; (True, expiry): logged in."""
        row = self._one(
            "SELECT accepted, expires_at FROM sp_portal_tap_login(:card_uid, :counter,"
            " :digest, :ttl_s)",
            card_uid=card_uid,
            counter=counter,
            digest=token_sha256(token),
            ttl_s=ttl_s,
        )
        return bool(row.accepted), row.expires_at

    def _read(self, sql: str, **params: object) -> Any:
        """One read-only statement in autocommit: no BEGIN / COMMIT round trips (the page's
        reads are the portal's hot path; one statement is atomic anyway)."""
        with translate_errors(), self._engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            return connection.execute(text(sql), params).one_or_none()

    def session(self, token: str) -> PortalSession | None:
        row = self._read(
            "SELECT card_uid, kind, expires_at FROM sp_portal_session(:digest)",
            digest=token_sha256(token),
        )
        if row is None:
            return None
        return PortalSession(card_uid=row.card_uid, kind=row.kind, expires_at=row.expires_at)

    def card(self, token: str, *, transactions_max: int) -> dict[str, Any] | None:
        """The page's whole document, or None without a valid session (one round trip)."""
        row = self._read(
            "SELECT sp_portal_card(:digest, :limit)",
            digest=token_sha256(token),
            limit=transactions_max,
        )
        document: dict[str, Any] | None = row[0]
        return document

    def logout(self, token: str) -> bool:
        return bool(self._one("SELECT sp_portal_logout(:digest)", digest=token_sha256(token))[0])

    def block(self, token: str, reason: str) -> str | None:
        """Block the session's card; its UID, or None without a valid session."""
        row = self._one(
            "SELECT sp_portal_block(:digest, :reason)", digest=token_sha256(token), reason=reason
        )
        card_uid: str | None = row[0]
        return card_uid
