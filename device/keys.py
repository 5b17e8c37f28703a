"""The kiosk's key files (KIOSK_KEY_FILE, `festival-kiosk keygen`): PEM PKCS#8, mode 0600.

The file I/O around protocol/keys.py, which stays pure (bytes <-> keys). The cloud has its own,
cloud/keys.py (the two sides never import each other); tests/test_key_files.py runs the same
checks against both.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from protocol.keys import (
    PRIVATE_KEY_FILE_MODE,
    PRIVATE_KEY_PEM_BYTES_MAX,
    Ed25519PrivateKey,
    key_file_mode_problem,
    private_key_from_pem,
    private_key_pem,
)


def save_private_key(
    key: Ed25519PrivateKey, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write ``key`` to ``path`` as PEM PKCS#8, mode 0600, atomically.

    The key is written to a temporary file (created 0600, never readable by others) in the same
    directory, synced, then moved into place: readers see the old file or the whole new one.
    Without ``overwrite`` an existing file is never replaced (FileExistsError).
    """
    target = Path(path)
    pem = private_key_pem(key)
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
