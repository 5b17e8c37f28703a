"""Kiosk settings: validated once, every problem named, secrets and keys checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from device.keys import load_private_key, save_private_key
from device.machine import Mode
from device.settings import SettingsError, load_settings
from protocol.keys import generate_private_key, public_key_b64


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    key_file = tmp_path / "kiosk.pem"
    save_private_key(generate_private_key(), key_file)
    return {
        "KIOSK_ID": "bar-1",
        "KIOSK_KEY_FILE": str(key_file),
        "CLOUD_PUBLIC_KEY": public_key_b64(generate_private_key()),
        "MQTT_URL": "mqtt://bar-1:secret@127.0.0.1:1883",
        "KIOSK_STATE_DIR": str(tmp_path / "state"),
        "KIOSK_MODE": "bar",
        "KIOSK_READER": "ACR1252",
        "KIOSK_GPIO": "fake",
        "PATH": "/usr/bin",  # unrelated variables are fine
    }


def test_valid_settings_with_defaults(environ: dict[str, str]) -> None:
    settings = load_settings(environ)
    assert settings.kiosk_id == "bar-1"
    assert settings.mode is Mode.BAR
    assert (settings.http_port, settings.topic_prefix, settings.currency) == (
        8080,
        "festival",
        "EUR",
    )
    assert settings.menu is not None and settings.menu.product("beer") is not None
    assert settings.mqtt.username == "bar-1" and not settings.mqtt.tls
    assert not settings.simulated_reader
    assert "secret" not in repr(settings)


def test_every_problem_is_reported_at_once(environ: dict[str, str]) -> None:
    environ.update(
        {
            "KIOSK_ID": "Bar 1",
            "KIOSK_MODE": "disco",
            "KIOSK_GPIO": "maybe",
            "MQTT_URL": "http://broker",
            "KIOSK_HTTP_PORT": "99999",
            "KIOSK_RESULT_TIMEOUT_S": "nan",
            "KIOSK_OUTBOX_MAX": "0",
            "KIOSK_RED_PIN": "17",  # the same as the default green pin
            "KIOSK_TYPO": "1",
        }
    )
    del environ["CLOUD_PUBLIC_KEY"]
    with pytest.raises(SettingsError) as raised:
        load_settings(environ)
    message = str(raised.value)
    for expected in (
        "KIOSK_ID",
        "KIOSK_MODE",
        "KIOSK_GPIO",
        "MQTT_URL",
        "KIOSK_HTTP_PORT",
        "KIOSK_RESULT_TIMEOUT_S",
        "KIOSK_OUTBOX_MAX",
        "must differ",
        "KIOSK_TYPO is not a kiosk setting",
        "CLOUD_PUBLIC_KEY is required",
    ):
        assert expected in message


def test_key_file_readable_by_others_is_refused(environ: dict[str, str]) -> None:
    Path(environ["KIOSK_KEY_FILE"]).chmod(0o644)
    with pytest.raises(SettingsError, match="chmod 600"):
        load_settings(environ)


def test_cloud_public_key_must_be_raw_base64url(environ: dict[str, str]) -> None:
    environ["CLOUD_PUBLIC_KEY"] = "not-a-key"
    with pytest.raises(SettingsError, match="CLOUD_PUBLIC_KEY"):
        load_settings(environ)


def test_menu_in_another_currency_is_refused(environ: dict[str, str]) -> None:
    environ["FESTIVAL_CURRENCY"] = "CHF"
    with pytest.raises(SettingsError, match="menu currency must be CHF"):
        load_settings(environ)


def test_checkpoint_needs_no_menu(environ: dict[str, str]) -> None:
    environ.update({"KIOSK_MODE": "checkpoint", "FESTIVAL_CURRENCY": "CHF", "KIOSK_READER": "sim"})
    settings = load_settings(environ)
    assert settings.menu is None and settings.simulated_reader


def test_run_with_bad_settings_exits_2_naming_the_problem(environ: dict[str, str]) -> None:
    environ["KIOSK_MODE"] = "disco"
    result = subprocess.run(
        [sys.executable, "-m", "device.cli", "run"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "KIOSK_MODE must be bar or checkpoint" in result.stderr


def test_keygen_writes_a_private_key_file(tmp_path: Path) -> None:
    out = tmp_path / "new.pem"
    result = subprocess.run(
        [sys.executable, "-m", "device.cli", "keygen", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stat().st_mode & 0o777 == 0o600
    assert result.stdout.strip() == public_key_b64(load_private_key(out))


@pytest.mark.parametrize(
    "url",
    [
        "mqtt://bar-1:s3cret-password",  # forgot @host: urllib takes the password for a port
        "mqtt://bar-1:s3cret-password@broker:99999",
        "mqtt://bar-1:s3cret#password@broker",
        "http://bar-1:s3cret-password@broker",
    ],
)
def test_malformed_mqtt_url_is_named_without_its_password(
    environ: dict[str, str], url: str
) -> None:
    environ["MQTT_URL"] = url
    with pytest.raises(SettingsError) as raised:
        load_settings(environ)
    message = str(raised.value)
    assert "MQTT_URL 'mqtt" in message or "MQTT_URL 'http" in message
    assert "bar-1:***" in message
    assert "s3cret" not in message


def test_run_with_a_malformed_mqtt_url_prints_no_password(environ: dict[str, str]) -> None:
    environ["MQTT_URL"] = "mqtt://bar-1:s3cret-password"
    result = subprocess.run(
        [sys.executable, "-m", "device.cli", "run"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "MQTT_URL 'mqtt://bar-1:***'" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_the_return_cap_is_a_bounded_setting(environ: dict[str, str]) -> None:
    assert load_settings(environ).return_cents_max == 2000
    environ["FESTIVAL_RETURN_MAX_CENTS"] = "0"  # a bar that takes no cups back
    assert load_settings(environ).return_cents_max == 0
    for bad in ("-1", "20.00", "99999999999"):
        environ["FESTIVAL_RETURN_MAX_CENTS"] = bad
        with pytest.raises(SettingsError, match="FESTIVAL_RETURN_MAX_CENTS"):
            load_settings(environ)


def test_the_void_window_is_a_bounded_setting(environ: dict[str, str]) -> None:
    assert load_settings(environ).void_window_s == 900
    environ["FESTIVAL_VOID_WINDOW_S"] = "300"
    assert load_settings(environ).void_window_s == 300
    for bad in ("-1", "1.5", "1000001"):
        environ["FESTIVAL_VOID_WINDOW_S"] = bad
        with pytest.raises(SettingsError, match="FESTIVAL_VOID_WINDOW_S"):
            load_settings(environ)


def test_offline_after_is_a_bounded_setting_that_reaches_the_machine(
    environ: dict[str, str],
) -> None:
    from device.main import machine_config

    settings = load_settings(environ)
    assert settings.offline_after_s == 3.0
    assert machine_config(settings).offline_after_ms == 3_000
    environ["KIOSK_OFFLINE_AFTER_S"] = "1.5"
    assert machine_config(load_settings(environ)).offline_after_ms == 1_500
    for bad in ("0", "0.1", "121", "nan", "soon"):
        environ["KIOSK_OFFLINE_AFTER_S"] = bad
        with pytest.raises(SettingsError, match="KIOSK_OFFLINE_AFTER_S"):
            load_settings(environ)
