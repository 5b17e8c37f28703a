"""Key files on each side (device/keys.py, cloud/keys.py): the same checks against both.

protocol/keys.py is pure (bytes <-> keys); writing and reading the PEM files is each side's I/O,
in its own module, so that the kiosk and the cloud never import each other."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cloud.keys
import device.keys
from protocol.keys import generate_private_key, public_key_b64
from tests.protocol.test_keys import (
    OPENSSL_ED25519_PEM,
    OPENSSL_ENCRYPTED_PEM,
    OPENSSL_PUBLIC_B64,
    OPENSSL_X25519_PEM,
)


@pytest.fixture(params=[device.keys, cloud.keys], ids=["device", "cloud"])
def keys(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


def test_save_then_load_round_trips_with_mode_0600(tmp_path: Path, keys: ModuleType) -> None:
    key = generate_private_key()
    path = tmp_path / "kiosk.pem"
    keys.save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_b64(keys.load_private_key(path)) == public_key_b64(key)
    assert [entry.name for entry in tmp_path.iterdir()] == ["kiosk.pem"]  # no temp file left


def test_mode_is_0600_whatever_the_umask(tmp_path: Path, keys: ModuleType) -> None:
    previous = os.umask(0)
    try:
        keys.save_private_key(generate_private_key(), tmp_path / "k.pem")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


def test_refuses_to_overwrite_unless_asked(tmp_path: Path, keys: ModuleType) -> None:
    path = tmp_path / "kiosk.pem"
    first, second = generate_private_key(), generate_private_key()
    keys.save_private_key(first, path)
    with pytest.raises(FileExistsError):
        keys.save_private_key(second, path)
    assert public_key_b64(keys.load_private_key(path)) == public_key_b64(first)
    keys.save_private_key(second, path, overwrite=True)
    assert public_key_b64(keys.load_private_key(path)) == public_key_b64(second)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [entry.name for entry in tmp_path.iterdir()] == ["kiosk.pem"]


def test_loads_what_openssl_genpkey_writes(tmp_path: Path, keys: ModuleType) -> None:
    path = tmp_path / "openssl.pem"
    path.write_bytes(OPENSSL_ED25519_PEM)
    key = keys.load_private_key(path)
    assert isinstance(key, Ed25519PrivateKey)
    assert public_key_b64(key) == OPENSSL_PUBLIC_B64


@pytest.mark.parametrize(
    ("pem", "expected"),
    [
        # Every refusal of protocol.keys.private_key_from_pem (tests/protocol/test_keys.py) reaches
        # the caller, named after the file.
        (OPENSSL_X25519_PEM, "wrong.pem: expected an Ed25519 private key, found an X25519 key"),
        (OPENSSL_ENCRYPTED_PEM, "wrong.pem: encrypted private keys are not supported"),
    ],
)
def test_wrong_key_files_give_clear_errors(
    tmp_path: Path, keys: ModuleType, pem: bytes, expected: str
) -> None:
    path = tmp_path / "wrong.pem"
    path.write_bytes(pem)
    with pytest.raises(ValueError, match=expected):
        keys.load_private_key(path)


def test_oversized_key_file_is_refused(tmp_path: Path, keys: ModuleType) -> None:
    path = tmp_path / "huge.pem"
    path.write_bytes(b"x" * 100_000)
    with pytest.raises(ValueError, match="too large"):
        keys.load_private_key(path)


@pytest.mark.parametrize(
    ("mode", "refused"), [(0o600, False), (0o400, False), (0o640, True), (0o604, True)]
)
def test_a_key_file_others_may_read_or_write_is_refused(
    tmp_path: Path, keys: ModuleType, mode: int, refused: bool
) -> None:
    path = tmp_path / "kiosk.pem"
    keys.save_private_key(generate_private_key(), path)
    path.chmod(mode)
    problem = keys.mode_problem(path)
    if refused:
        assert problem == (
            f"{path} has mode {mode:04o}: it must be 0600, only its owner reads it"
            f" (chmod 600 {path})"
        )
    else:
        assert problem is None
