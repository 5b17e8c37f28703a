"""Ed25519 keys as PEM bytes and base64url public keys (key files: tests/test_key_files.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.keys import (
    b64url_decode,
    b64url_encode,
    generate_private_key,
    load_public_key_b64,
    private_key_from_pem,
    private_key_pem,
    public_key_b64,
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


def test_pem_round_trips() -> None:
    key = generate_private_key()
    pem = private_key_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_b64(private_key_from_pem(pem)) == public_key_b64(key)


def test_decodes_what_openssl_genpkey_writes() -> None:
    key = private_key_from_pem(OPENSSL_ED25519_PEM)
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
        (b"x" * 100_000, "too large"),
    ],
)
def test_wrong_pem_gives_clear_errors(pem: bytes, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        private_key_from_pem(pem, source="kiosk.pem")


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
