"""The cloud's key files (CLOUD_SIGNING_KEY_FILE, `festival-cloud keygen`, the demo): PEM PKCS#8,
mode 0600; (1.1) the card master key file (CARD_MASTER_KEY_FILE, `card master-keygen`): 32 hex
digits and a newline, mode 0600, written the same atomic way.

The file I/O around protocol/keys.py, which stays pure (bytes <-> keys). The kiosk has its own,
device/keys.py (the two sides never import each other); tests/test_key_files.py runs the same
checks against both.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Final

from protocol.keys import (
    PRIVATE_KEY_FILE_MODE,
    PRIVATE_KEY_PEM_BYTES_MAX,
    Ed25519PrivateKey,
    key_file_mode_problem,
    private_key_from_pem,
    private_key_pem,
)
from protocol.sun import AES_KEY_BYTES, parse_master_key

# 32 hex digits, a newline, maybe a CR: anything much longer is not a master key file.
MASTER_KEY_FILE_BYTES_MAX: Final = 64


def save_private_key(
    key: Ed25519PrivateKey, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write ``key`` to ``path`` as PEM PKCS#8, mode 0600, atomically.

    The key is written to a temporary file (created 0600, never readable by others) in the same
    directory, synced, then moved into place: readers see the old file or the whole new one.
    Without ``overwrite`` an existing file is never replaced (FileExistsError).
    """
    _write_secret_file(private_key_pem(key), Path(path), overwrite=overwrite)


def _write_secret_file(pem: bytes, target: Path, *, overwrite: bool) -> None:
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_KEY_FILE_MODE
    )
    try:
        try:
            os.fchmod(descriptor, PRIVATE_KEY_FILE_MODE)
            written = 0
            while written < len(pem):
                written += os.write(descriptor, pem[written:])
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        if overwrite:
            os.replace(temporary, target)
        else:
            # link() fails if the target exists: no window in which an existing key is replaced.
            os.link(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def mode_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a private key file must not be used (anyone but its owner may read or write it), or
    None when its mode is 0600 or stricter; OSError when it cannot be looked at."""
    return key_file_mode_problem(os.fspath(path), stat.S_IMODE(os.stat(path).st_mode))


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an unencrypted PEM PKCS#8 Ed25519 private key; raise ValueError on anything else."""
    target = Path(path)
    with target.open("rb") as file:
        data = file.read(PRIVATE_KEY_PEM_BYTES_MAX + 1)
    return private_key_from_pem(data, source=str(target))


def generate_card_master_key() -> bytes:
    """(1.1) A new card master key: 16 random bytes from the operating system."""
    return secrets.token_bytes(AES_KEY_BYTES)


def save_card_master_key(
    key: bytes, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write the card master key as 32 hex digits and a newline, mode 0600, atomically; an
    existing file is never replaced without ``overwrite`` (FileExistsError)."""
    if len(key) != AES_KEY_BYTES:
        raise ValueError("a card master key is 16 bytes")
    _write_secret_file(key.hex().upper().encode("ascii") + b"\n", Path(path), overwrite=overwrite)


def load_card_master_key(path: str | os.PathLike[str]) -> bytes:
    """Read CARD_MASTER_KEY_FILE; ValueError when its mode lets others read it or its content is
    not 32 hex digits (the message never quotes the content); OSError when it cannot be read."""
    problem = mode_problem(path)
    if problem is not None:
        raise ValueError(problem)
    with Path(path).open("rb") as file:
        data = file.read(MASTER_KEY_FILE_BYTES_MAX + 1)
    if len(data) > MASTER_KEY_FILE_BYTES_MAX:
        raise ValueError(f"{os.fspath(path)} is too long for a card master key (32 hex digits)")
    try:
        return parse_master_key(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError(
            f"{os.fspath(path)} does not hold a card master key (32 hex digits)"
        ) from None
