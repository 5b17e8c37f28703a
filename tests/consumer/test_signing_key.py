"""CLOUD_SIGNING_KEY_FILE is refused unless only its owner can read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.consumer.signing_key import load_signing_key
from cloud.keys import save_private_key
from cloud.settings import SettingsError
from protocol.keys import generate_private_key, public_key_b64


def test_a_0600_key_loads(tmp_path: Path) -> None:
    key = generate_private_key()
    path = tmp_path / "cloud.pem"
    save_private_key(key, path)
    assert public_key_b64(load_signing_key(path)) == public_key_b64(key)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "cloud.pem"
    save_private_key(generate_private_key(), path)
    path.chmod(mode)
    with pytest.raises(SettingsError, match="must be 0600"):
        load_signing_key(path)


def test_a_missing_or_broken_key_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CLOUD_SIGNING_KEY_FILE"):
        load_signing_key(tmp_path / "absent.pem")
    broken = tmp_path / "broken.pem"
    broken.write_text("not a key")
    broken.chmod(0o600)
    with pytest.raises(SettingsError, match="not a PEM private key"):
        load_signing_key(broken)
