"""The cloud's settings: validated once, with errors that name the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.settings import CloudSettings, SettingsError, load_settings


def test_postgresql_urls_get_a_driver() -> None:
    settings = CloudSettings(database_url="postgresql://festival@db.internal:5432/festival")
    assert settings.database_url == "postgresql+psycopg2://festival@db.internal:5432/festival"


def test_tls_files_with_a_clear_text_url_are_refused() -> None:
    with pytest.raises(ValueError, match="need mqtts://"):
        CloudSettings(mqtt_url="mqtt://cloud:pw@broker:1883", mqtt_ca_file="/etc/ca.pem")
    settings = CloudSettings(mqtt_url="mqtts://cloud:pw@broker", mqtt_ca_file="/etc/ca.pem")
    assert settings.mqtt_endpoint.tls
    assert settings.mqtt_endpoint.port == 8883
    assert "pw" not in repr(settings.mqtt_endpoint)
    assert "pw" not in repr(settings)


def test_require_names_missing_variables_and_refuses_placeholders() -> None:
    settings = CloudSettings(admin_token="changeme")
    with pytest.raises(SettingsError, match="DATABASE_URL, STRIPE_WEBHOOK_SECRET"):
        settings.require("database_url", "stripe_webhook_secret")
    with pytest.raises(SettingsError, match="ADMIN_TOKEN is a placeholder"):
        settings.require("admin_token")
    CloudSettings(admin_token="changeme", festival_environment="development").require("admin_token")


def test_environment_is_read_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FESTIVAL_MAX_BALANCE_CENTS", "200000")
    monkeypatch.setenv("FESTIVAL_CURRENCY", "CHF")
    settings = load_settings()
    assert (settings.festival_max_balance_cents, settings.festival_currency) == (200000, "CHF")
    monkeypatch.setenv("FESTIVAL_MAX_BALANCE_CENTS", "4.5")
    with pytest.raises(SettingsError, match="festival_max_balance_cents"):
        load_settings()
    monkeypatch.setenv("FESTIVAL_MAX_BALANCE_CENTS", "150000")
    monkeypatch.setenv("FESTIVAL_CURRENCY", "eur")
    with pytest.raises(SettingsError, match="festival_currency"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("MQTT_URL", "mqtt://cloud:s3cret-password@broker:12x"),
        ("MQTT_URL", "mqtt://cloud:s3cret#password@broker"),
        ("MQTT_URL", "mqtt://cloud:s3cret-password"),
        ("MQTT_URL", "https://cloud:s3cret-password@broker"),
        ("DATABASE_URL", "postgresql://festival:s3cret-password@db:12x/festival"),
        ("DATABASE_URL", "postgresql://festival:s3cret#password@db/festival"),
    ],
)
def test_settings_errors_name_a_malformed_url_without_its_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    monkeypatch.setenv(variable, url)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert variable in message
    assert "s3cret" not in message
    assert ":***" in message


def _cloud_cli(home: Path, verb: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`festival-cloud VERB` as an operator runs it, with only ``env`` set besides PATH and HOME."""
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli", verb],
        env={"PATH": os.environ["PATH"], "HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_cli_prints_a_malformed_url_redacted(tmp_path: Path) -> None:
    """What an operator sees: one clear line, no traceback, no password."""
    for variable, url in (
        ("MQTT_URL", "mqtt://cloud:s3cret-password@broker:12x"),
        ("DATABASE_URL", "postgresql://festival:s3cret-password@db:12x/festival"),
    ):
        result = _cloud_cli(tmp_path, "check", **{variable: url})
        assert result.returncode == 2, result.stderr
        assert "configuration error" in result.stderr and variable in result.stderr
        assert "Traceback" not in result.stderr
        assert "s3cret" not in result.stderr + result.stdout


def test_the_return_limit_is_read_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CloudSettings().festival_return_max_cents == 2000
    monkeypatch.setenv("FESTIVAL_RETURN_MAX_CENTS", "0")  # no returns at all
    assert CloudSettings().festival_return_max_cents == 0
    for bad in ("-1", "20.5", "1000000000"):
        monkeypatch.setenv("FESTIVAL_RETURN_MAX_CENTS", bad)
        with pytest.raises(ValueError, match="festival_return_max_cents"):
            CloudSettings()


def test_the_payout_fee_is_read_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CloudSettings().festival_payout_fee_cents == 0
    monkeypatch.setenv("FESTIVAL_PAYOUT_FEE_CENTS", "150")
    assert CloudSettings().festival_payout_fee_cents == 150
    for bad in ("-1", "1.50", "100000000001"):
        monkeypatch.setenv("FESTIVAL_PAYOUT_FEE_CENTS", bad)
        with pytest.raises(ValueError, match="festival_payout_fee_cents"):
            CloudSettings()


def test_festival_menu_grace_s_is_read_and_reaches_the_consumers_ledger(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """(1.1, DESIGN.md) FESTIVAL_MENU_GRACE_S from the environment is the grace period the
    consumer's ledger checks prices with (cloud/consumer/main.py builds its Ledger with it)."""
    import cloud.ledger
    from cloud.consumer import main as consumer_main
    from device.keys import save_private_key
    from protocol.keys import generate_private_key
    from protocol.limits import MENU_GRACE_S_DEFAULT

    key_file = tmp_path / "cloud.pem"
    save_private_key(generate_private_key(), key_file)  # mode 0600
    monkeypatch.setenv("DATABASE_URL", "postgresql://festival@127.0.0.1:1/festival")
    monkeypatch.setenv("MQTT_URL", "mqtt://cloud:pw@127.0.0.1:1")
    monkeypatch.setenv("CLOUD_SIGNING_KEY_FILE", str(key_file))
    monkeypatch.delenv("FESTIVAL_CARD_AUTH", raising=False)
    monkeypatch.delenv("FESTIVAL_MENU_GRACE_S", raising=False)
    assert load_settings().festival_menu_grace_s == MENU_GRACE_S_DEFAULT

    class Built(Exception):
        """Raised by the recording Ledger: the consumer stops before any connection."""

    seen: dict[str, object] = {}

    class RecordingLedger(cloud.ledger.Ledger):
        def __init__(self, engine: object, **options: object) -> None:
            seen.update(options)
            raise Built

    monkeypatch.setattr(cloud.ledger, "Ledger", RecordingLedger)
    monkeypatch.setattr(consumer_main, "configure_logging", lambda: None)
    for value, grace_s in (("45", 45), ("0", 0), ("1000000", 1_000_000)):
        monkeypatch.setenv("FESTIVAL_MENU_GRACE_S", value)
        settings = load_settings()
        assert settings.festival_menu_grace_s == grace_s
        seen.clear()
        with pytest.raises(Built):
            consumer_main.run(settings)
        assert seen["menu_grace_s"] == grace_s
    for bad in ("-1", "1000001", "2.5", "ten minutes", ""):
        monkeypatch.setenv("FESTIVAL_MENU_GRACE_S", bad)
        with pytest.raises(SettingsError, match="festival_menu_grace_s"):
            load_settings()


def test_the_consumer_refuses_a_bad_festival_menu_grace_s_in_one_line(tmp_path: Path) -> None:
    """What an operator sees when `festival-cloud consumer` gets a bad grace period: exit 2, the
    variable named, no traceback, before anything is connected."""
    for bad, reason in (("-1", "greater than or equal to 0"), ("soon", "valid integer")):
        result = _cloud_cli(tmp_path, "consumer", FESTIVAL_MENU_GRACE_S=bad)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("festival-cloud: configuration error"), result.stderr
        assert "festival_menu_grace_s" in result.stderr and reason in result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
