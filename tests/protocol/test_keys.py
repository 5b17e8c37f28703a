"""Key files and base64url public keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.keys import (
    b64url_decode,
    b64url_encode,
    generate_private_key,
    load_private_key,
    load_public_key_b64,
    public_key_b64,
    save_private_key,
)

# Written by `openssl genpkey -algorithm ed25519` (OpenSSL 3.0); its public key, per
# `openssl pkey -pubout -outform DER | tail -c 32 | base64url`, is OPENSSL_PUBLIC_B64.
OPENSSL_ED25519_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIB46GcTNkoyB6b/8qd9xckt6g1kv+jHM+CNBvsAScjjf
-----END PRIVATE KEY-----
"""
OPENSSL_PUBLIC_B64 = "kjF5_rpK0gIyd5305orjXIkiwGqSWNuD5Kj-j89kD4Y"
OPENSSL_X25519_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VuBCIEIPgsXzZ5xHlefyyLpmHZ6Hh7JArc3jLhpi6SztwmkJ9S
-----END PRIVATE KEY-----
"""
OPENSSL_P256_PEM = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9/cUNKU3G0ktYBS0
pN0frJ5ZaOm8oIxahEYjfuTXTZWhRANCAATzC3XLjPr4JcDMPJTcplS//1f+WsVm
rSiXtRRx9ydvs4AMAlui6VUtSu8ssL8ixlSdx0Fg05Ckqj7x6ho7kPzv
-----END PRIVATE KEY-----
"""
OPENSSL_ENCRYPTED_PEM = b"""-----BEGIN ENCRYPTED PRIVATE KEY-----
MIGbMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAhMTQx3blfU6gICCAAw
DAYIKoZIhvcNAgkFADAdBglghkgBZQMEAQIEEI5KzkWXthtVwmuO6oUAyucEQBXo
B9uBeAQP7Dr832MJ5SKf6pCwGAfIJ1YZyQeapdbx0tKrn3LB9FemRkFMt3QxceLt
2QMz9WNL2wihxnPIBsw=
-----END ENCRYPTED PRIVATE KEY-----
"""


def test_save_then_load_round_trips_with_mode_0600(tmp_path: Path) -> None:
    key = generate_private_key()
    path = tmp_path / "kiosk.pem"
    save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_b64(load_private_key(path)) == public_key_b64(key)
    assert [entry.name for entry in tmp_path.iterdir()] == ["kiosk.pem"]  # no temp file left


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        save_private_key(generate_private_key(), tmp_path / "k.pem")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "kiosk.pem"
    first, second = generate_private_key(), generate_private_key()
    save_private_key(first, path)
    with pytest.raises(FileExistsError):
        save_private_key(second, path)
    assert public_key_b64(load_private_key(path)) == public_key_b64(first)
    save_private_key(second, path, overwrite=True)
    assert public_key_b64(load_private_key(path)) == public_key_b64(second)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in tmp_path.iterdir()] == ["kiosk.pem"]


def test_loads_what_openssl_genpkey_writes(tmp_path: Path) -> None:
    path = tmp_path / "openssl.pem"
    path.write_bytes(OPENSSL_ED25519_PEM)
    key = load_private_key(path)
    assert isinstance(key, Ed25519PrivateKey)
    assert public_key_b64(key) == OPENSSL_PUBLIC_B64


@pytest.mark.parametrize(
    ("pem", "expected"),
    [
        (OPENSSL_X25519_PEM, "expected an Ed25519 private key, found an X25519 key"),
        (OPENSSL_P256_PEM, "expected an Ed25519 private key, found an EC key"),
        (OPENSSL_ENCRYPTED_PEM, "encrypted private keys are not supported"),
        (b"not a key", "not a PEM private key"),
        (b"", "not a PEM private key"),
    ],
)
def test_wrong_key_files_give_clear_errors(tmp_path: Path, pem: bytes, expected: str) -> None:
    path = tmp_path / "wrong.pem"
    path.write_bytes(pem)
    with pytest.raises(ValueError, match=expected):
        load_private_key(path)


def test_oversized_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.pem"
    path.write_bytes(b"x" * 100_000)
    with pytest.raises(ValueError, match="too large"):
        load_private_key(path)


def test_public_key_b64_is_43_chars_and_round_trips() -> None:
    key = generate_private_key()
    text = public_key_b64(key)
    assert text == public_key_b64(key.public_key())
    assert len(text) == 43
    assert public_key_b64(load_public_key_b64(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        OPENSSL_PUBLIC_B64[:-1],  # 42 characters
        OPENSSL_PUBLIC_B64 + "A",  # 44 characters
        OPENSSL_PUBLIC_B64 + "=",  # padding
        OPENSSL_PUBLIC_B64[:-1] + "Z",  # unused trailing bits set: not canonical
        "+" + OPENSSL_PUBLIC_B64[1:],  # standard, not url-safe, alphabet
        "/" + OPENSSL_PUBLIC_B64[1:],
        " " + OPENSSL_PUBLIC_B64[1:],
        "\u0430" + OPENSSL_PUBLIC_B64[1:],  # Cyrillic a
        "",
    ],
)
def test_load_public_key_b64_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        load_public_key_b64(text)


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("", b""),
        ("AA", b"\x00"),
        ("AAA", b"\x00\x00"),
        ("AAAA", b"\x00\x00\x00"),
        ("-_8", b"\xfb\xff"),
    ],
)
def test_b64url_decode_accepts_canonical_text(text: str, decoded: bytes) -> None:
    assert b64url_decode(text) == decoded
    assert b64url_encode(decoded) == text


@pytest.mark.parametrize("text", ["A", "AB", "AAB", "AA==", "AAA=", "AA AA", "AA\n", "+/8", "é"])
def test_b64url_decode_rejects_everything_else(text: str) -> None:
    with pytest.raises(ValueError):
        b64url_decode(text)
