"""JWS compact parsing and Ed25519 verification: RFC 8037 vector, alg confusion, tampering."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.errors import ErrorCode, ProtocolError
from protocol.jws import parse_compact, sign_compact, verify, verify_signature
from protocol.keys import b64url_decode, b64url_encode, load_public_key_b64, public_key_b64
from protocol.limits import MESSAGE_BYTES_MAX

from .support import KIOSK_ID, KIOSK_KEY, OTHER_KIOSK_KEY, sign_with_header

# RFC 8037 Appendix A.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_JWS = (
    b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    b".hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)
PAYLOAD = b'{"kiosk_id":"bar-01","seq":1}'


def failure(token: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        verify(parse_compact(token), KIOSK_KEY.public_key())
    return caught.value


def header_of(token: bytes) -> bytes:
    return b64url_decode(token.split(b".")[0].decode())


# --- RFC 8037 -------------------------------------------------------------------------------


def test_rfc8037_public_key_from_private_key() -> None:
    key = Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))
    assert public_key_b64(key) == RFC8037_X


def test_rfc8037_signature_is_reproduced_and_verifies() -> None:
    key = Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))
    signing_input, _, signature_b64 = RFC8037_JWS.rpartition(b".")
    assert b64url_decode(signing_input.split(b".")[0].decode()) == b'{"alg":"EdDSA"}'
    assert b64url_decode(signing_input.split(b".")[1].decode()) == b"Example of Ed25519 signing"
    signature = b64url_decode(signature_b64.decode())
    assert key.sign(signing_input) == signature  # Ed25519 is deterministic
    verify_signature(signing_input, signature, load_public_key_b64(RFC8037_X))


def test_sign_compact_makes_the_signature_cryptography_makes() -> None:
    # Signed with libsodium, verified here with OpenSSL: Ed25519 signatures are deterministic.
    key = Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))
    for kid in ("bar-01", "cloud"):
        token = sign_compact(b"Example of Ed25519 signing", key, kid)
        signing_input, _, signature_b64 = token.rpartition(b".")
        assert b64url_decode(signature_b64.decode()) == key.sign(signing_input)
        key.public_key().verify(b64url_decode(signature_b64.decode()), signing_input)


def test_rfc8037_signature_fails_on_any_other_input() -> None:
    signing_input, _, signature_b64 = RFC8037_JWS.rpartition(b".")
    with pytest.raises(ProtocolError) as caught:
        verify_signature(
            signing_input + b"x",
            b64url_decode(signature_b64.decode()),
            load_public_key_b64(RFC8037_X),
        )
    assert caught.value.code is ErrorCode.INVALID_SIGNATURE


def test_rfc8037_token_is_rejected_for_lacking_a_kid() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_compact(RFC8037_JWS)
    assert caught.value.code is ErrorCode.INVALID_SIGNATURE
    assert "kid" in caught.value.message


# --- round trip ---------------------------------------------------------------------------


def test_sign_then_parse_and_verify() -> None:
    token = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID)
    assert header_of(token) == b'{"alg":"EdDSA","kid":"bar-01"}'
    parts = parse_compact(token)
    assert parts.kid == KIOSK_ID
    assert parts.header == {"alg": "EdDSA", "kid": "bar-01"}
    assert parts.payload == PAYLOAD
    assert parts.signing_input == token.rpartition(b".")[0]
    assert len(parts.signature) == 64
    verify(parts, KIOSK_KEY.public_key())


def test_wrong_key_does_not_verify() -> None:
    token = sign_compact(PAYLOAD, OTHER_KIOSK_KEY, KIOSK_ID)
    assert failure(token).code is ErrorCode.INVALID_SIGNATURE


def test_typ_is_allowed_and_signed() -> None:
    token = sign_with_header(b'{"alg":"EdDSA","kid":"bar-01","typ":"JOSE"}', PAYLOAD)
    parts = parse_compact(token)
    assert parts.header["typ"] == "JOSE"
    verify(parts, KIOSK_KEY.public_key())


def test_header_cache_returns_independent_headers() -> None:
    token = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID)
    first = parse_compact(token)
    first.header["alg"] = "none"
    assert parse_compact(token).header["alg"] == "EdDSA"


# --- algorithm confusion ------------------------------------------------------------------


def test_alg_none_with_empty_signature_is_rejected() -> None:
    header = b64url_encode(b'{"alg":"none","kid":"bar-01"}')
    token = (header + "." + b64url_encode(PAYLOAD) + ".").encode()
    error = failure(token)
    assert error.code is ErrorCode.INVALID_SIGNATURE
    assert "alg" in error.message


@pytest.mark.parametrize("digest", [hashlib.sha256, hashlib.sha512])
def test_hmac_keyed_with_the_public_key_is_rejected(digest: type) -> None:
    name = "HS256" if digest is hashlib.sha256 else "HS512"  # HS512 gives 64 bytes, like EdDSA
    header = b64url_encode(json.dumps({"alg": name, "kid": KIOSK_ID}).encode())
    signing_input = (header + "." + b64url_encode(PAYLOAD)).encode()
    public_raw = b64url_decode(public_key_b64(KIOSK_KEY))
    mac = hmac.new(public_raw, signing_input, digest).digest()
    token = signing_input + b"." + b64url_encode(mac).encode()
    error = failure(token)
    assert error.code is ErrorCode.INVALID_SIGNATURE
    assert "alg" in error.message


@pytest.mark.parametrize(
    "alg", ["none", "None", "HS256", "RS256", "ES256", "eddsa", "Ed25519", "EdDSA ", "", None, 1]
)
def test_only_alg_eddsa_is_accepted(alg: object) -> None:
    header = json.dumps({"alg": alg, "kid": KIOSK_ID}).encode()
    error = failure(sign_with_header(header, PAYLOAD))
    assert error.code is ErrorCode.INVALID_SIGNATURE


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"EdDSA","kid":"bar-01","crit":["exp"]}',
        b'{"alg":"EdDSA","kid":"bar-01","jwk":{"kty":"OKP","crv":"Ed25519","x":"AA"}}',
        b'{"alg":"EdDSA","kid":"bar-01","x5u":"https://evil.example/key"}',
        b'{"alg":"EdDSA","kid":"bar-01","jku":"https://evil.example/jwks"}',
        b'{"alg":"EdDSA","kid":"bar-01","b64":false}',
        b'{"alg":"EdDSA","kid":"bar-01","zip":"DEF"}',
        b'{"kid":"bar-01"}',
    ],
)
def test_other_header_members_are_rejected_even_when_signed(header: bytes) -> None:
    assert failure(sign_with_header(header, PAYLOAD)).code is ErrorCode.INVALID_SIGNATURE


# --- kid ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"EdDSA"}',
        b'{"alg":"EdDSA","kid":null}',
        b'{"alg":"EdDSA","kid":1}',
        b'{"alg":"EdDSA","kid":["bar-01"]}',
        b'{"alg":"EdDSA","kid":""}',
        b'{"alg":"EdDSA","kid":"' + b"k" * 65 + b'"}',
        b'{"alg":"EdDSA","kid":"bar-01","typ":7}',
    ],
)
def test_missing_or_malformed_kid_is_invalid_signature(header: bytes) -> None:
    assert failure(sign_with_header(header, PAYLOAD)).code is ErrorCode.INVALID_SIGNATURE


@pytest.mark.parametrize(
    "header",
    [
        b'{"alg":"EdDSA","kid":"bar-01","alg":"none"}',  # duplicate member
        b'["alg","EdDSA"]',
        b'"EdDSA"',
        b"{alg:EdDSA}",
        b'{"alg":"EdDSA","kid":"bar-01"',
        b"\xff",
    ],
)
def test_header_that_is_not_a_strict_json_object_is_invalid_request(header: bytes) -> None:
    assert failure(sign_with_header(header, PAYLOAD)).code is ErrorCode.INVALID_REQUEST


# --- tampering ----------------------------------------------------------------------------


def test_tampered_header_does_not_verify() -> None:
    _, payload_b64, signature_b64 = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID).split(b".")
    other_header = b64url_encode(b'{"alg":"EdDSA","kid":"bar-01","typ":"JWT"}').encode()
    token = b".".join([other_header, payload_b64, signature_b64])
    assert failure(token).code is ErrorCode.INVALID_SIGNATURE


def test_tampered_payload_does_not_verify() -> None:
    header_b64, _, signature_b64 = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID).split(b".")
    other_payload = b64url_encode(PAYLOAD.replace(b'"seq":1', b'"seq":2')).encode()
    token = b".".join([header_b64, other_payload, signature_b64])
    assert failure(token).code is ErrorCode.INVALID_SIGNATURE


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_tampered_signature_does_not_verify(index: int) -> None:
    token = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID)
    signing_input, _, signature_b64 = token.rpartition(b".")
    signature = bytearray(b64url_decode(signature_b64.decode()))
    signature[index] ^= 0x01
    tampered = signing_input + b"." + b64url_encode(bytes(signature)).encode()
    assert failure(tampered).code is ErrorCode.INVALID_SIGNATURE


def test_non_canonical_signature_encoding_is_refused() -> None:
    # The last of 86 characters carries 2 signature bits and 4 unused bits: setting an unused
    # bit gives text that a lenient decoder maps to the same, valid, signature.
    token = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(chr(token[-1]))
    altered = token[:-1] + alphabet[last ^ 0x01].encode()
    lenient = base64.urlsafe_b64decode(altered.rpartition(b".")[2] + b"==")
    assert lenient == b64url_decode(token.rpartition(b".")[2].decode())
    assert failure(altered).code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("length", [0, 32, 63, 65])
def test_signature_of_wrong_length_is_invalid_signature(length: int) -> None:
    signing_input = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID).rpartition(b".")[0]
    token = signing_input + b"." + b64url_encode(b"\x00" * length).encode()
    assert failure(token).code is ErrorCode.INVALID_SIGNATURE


# --- structure ----------------------------------------------------------------------------


def token_of_length(length: int) -> bytes:
    """A validly signed token of exactly ``length`` bytes."""
    for filler in range(length):
        token = sign_compact(b"x" * filler, KIOSK_KEY, KIOSK_ID)
        if len(token) == length:
            return token
        if len(token) > length:
            break
    for filler in range(length):  # lengths 4k+1 of the payload part need another kid
        token = sign_compact(b"x" * filler, KIOSK_KEY, KIOSK_ID + "x")
        if len(token) == length:
            return token
    raise AssertionError(length)


def test_size_limit_is_inclusive() -> None:
    token = token_of_length(MESSAGE_BYTES_MAX)
    assert len(token) == 8192
    parse_compact(token)


def test_one_byte_over_the_size_limit_is_rejected_before_anything_else() -> None:
    token = token_of_length(MESSAGE_BYTES_MAX + 1)
    with pytest.raises(ProtocolError) as caught:
        parse_compact(token)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert "8192" in caught.value.message
    with pytest.raises(ProtocolError):
        parse_compact(b"\xff" * 10_000_000)  # no decoding is attempted


@pytest.mark.parametrize(
    "token",
    [
        b"",
        b".",
        b"..",
        b"abc",
        b"a.b",
        b"a.b.c.d",
        b"eyJhbGciOiJFZERTQSJ9..",
        b"eyJ hbGc.e30.AA",
        b"eyJhbGciOiJFZERTQSJ9=.e30.AA",
        b"eyJhbGciOiJFZERTQSJ9.e30=.AA",
        b"eyJhbGciOiJFZERTQSJ9.e+0.AA",
        b"\n",
    ],
)
def test_malformed_structure_is_invalid_request(token: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_compact(token)
    assert caught.value.code in (ErrorCode.INVALID_REQUEST, ErrorCode.INVALID_SIGNATURE)
    if token.count(b".") != 2:
        assert caught.value.code is ErrorCode.INVALID_REQUEST


def test_json_serialization_of_jws_is_not_accepted() -> None:
    token = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID)
    header, payload, signature = token.decode().split(".")
    flattened = json.dumps({"protected": header, "payload": payload, "signature": signature})
    with pytest.raises(ProtocolError):
        parse_compact(flattened.encode())


def test_truncated_tokens_are_rejected() -> None:
    token = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID)
    for length in range(len(token)):
        with pytest.raises(ProtocolError):
            verify(parse_compact(token[:length]), KIOSK_KEY.public_key())


@pytest.mark.parametrize("extra", [b"\xc3\xa9", b"\xff", b"\x80", "\u0430".encode()])
def test_non_ascii_messages_are_rejected(extra: bytes) -> None:
    token = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID)
    with pytest.raises(ProtocolError) as caught:
        parse_compact(token[:10] + extra + token[10:])
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert caught.value.message == "message is not ASCII"


def test_whitespace_around_the_token_is_not_tolerated() -> None:
    token = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID)
    for variant in (token + b"\n", b" " + token, token + b"\x00"):
        with pytest.raises(ProtocolError):
            parse_compact(variant)


def test_bytearray_and_memoryview_are_accepted() -> None:
    token = sign_compact(PAYLOAD, KIOSK_KEY, KIOSK_ID)
    for variant in (bytearray(token), memoryview(token)):
        verify(parse_compact(variant), KIOSK_KEY.public_key())  # type: ignore[arg-type]
