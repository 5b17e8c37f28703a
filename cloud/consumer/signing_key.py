"""The cloud's result-signing key (CLOUD_SIGNING_KEY_FILE): only its owner may read it."""

from __future__ import annotations

from pathlib import Path

from cloud.keys import load_private_key, mode_problem
from cloud.settings import SettingsError
from protocol.keys import Ed25519PrivateKey


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the PEM PKCS#8 Ed25519 key; SettingsError when missing, unreadable, not a key, or
    readable or writable by anyone but its owner (mode 0600, or stricter 0400)."""
    try:
        problem = mode_problem(path)
    except OSError as error:
        raise SettingsError(f"CLOUD_SIGNING_KEY_FILE {path}: {error.strerror}") from None
    if problem is not None:
        raise SettingsError(f"CLOUD_SIGNING_KEY_FILE {problem}")
    try:
        return load_private_key(path)
    except (OSError, ValueError) as error:
        raise SettingsError(f"CLOUD_SIGNING_KEY_FILE: {error}") from None
