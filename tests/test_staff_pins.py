"""cloud/staff.py: PIN hashes (scrypt, salted, checked in constant time) and the redaction of a
PIN from a message kept as a dead letter."""

from __future__ import annotations

import base64
import json

import pytest

from cloud.staff import (
    hash_pin,
    keyed_payload_hash,
    new_pin,
    payload_hash_key,
    redact_pin,
    verify_pin,
)


def test_a_hash_verifies_its_pin_only_and_is_salted() -> None:
    stored = hash_pin("123456")
    assert stored.startswith("scrypt$16384$8$1$") and "123456" not in stored
    assert verify_pin("123456", stored)
    assert not verify_pin("123457", stored)
    assert hash_pin("123456") != stored  # a new salt every time


@pytest.mark.parametrize(
    "stored",
    [None, "", "bcrypt$x", "scrypt$16384$8$1$AAAA", "scrypt$3$8$1$AAAA$AAAA", "scrypt$a$b$c$d$e"],
)
def test_anything_malformed_does_not_verify(stored: str | None) -> None:
    assert not verify_pin("123456", stored)


@pytest.mark.parametrize("pin", ["123", "1234567890123", "12a4", ""])
def test_a_pin_is_4_to_12_digits(pin: str) -> None:
    with pytest.raises(ValueError, match="4 to 12 digits"):
        hash_pin(pin)
    assert not verify_pin(pin, hash_pin("1234"))


def test_new_pins_are_six_random_digits() -> None:
    pins = {new_pin() for _ in range(200)}
    assert all(len(p) == 6 and p.isdigit() for p in pins) and len(pins) > 150


def _jws(document: dict[str, object]) -> bytes:
    body = base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=")
    return b"eyJhbGciOiJFZERTQSJ9." + body + b".c2ln"


def test_redaction_replaces_the_pin_of_a_jws_and_keeps_the_rest() -> None:
    redacted = redact_pin(_jws({"type": "staff_login", "pin": "987654", "staff_id": "mia"}))
    header, body, signature = redacted.split(b".")
    assert (header, signature) == (b"eyJhbGciOiJFZERTQSJ9", b"c2ln")
    document = json.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
    assert document == {"type": "staff_login", "pin": "[redacted]", "staff_id": "mia"}


def test_redaction_leaves_messages_without_a_pin_as_they_are() -> None:
    for raw in (_jws({"type": "bar_order"}), b"\x00\xffnot a jws at all", b"a.b.c"):
        assert redact_pin(raw) == raw
    assert redact_pin(b'{"pin": "1234"}') == b'{"pin":"[redacted]"}'
    assert b"1234" not in redact_pin(b'{"pin": "1234", oops')


def test_the_keyed_payload_hash_is_stable_and_needs_the_key() -> None:
    plain = "ab" * 32
    key = payload_hash_key(b"the cloud key's PEM")
    keyed = keyed_payload_hash(key, plain)
    assert keyed == keyed_payload_hash(payload_hash_key(b"the cloud key's PEM"), plain)
    assert len(keyed) == 64 and keyed != plain
    assert keyed != keyed_payload_hash(payload_hash_key(b"another key"), plain)
    assert keyed != keyed_payload_hash(key, "cd" * 32)
