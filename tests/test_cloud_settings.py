"""The cloud's settings: validated once, with errors that name the variable."""

from __future__ import annotations

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


def test_the_return_limit_is_read_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CloudSettings().festival_return_max_cents == 2000
    monkeypatch.setenv("FESTIVAL_RETURN_MAX_CENTS", "0")  # no returns at all
    assert CloudSettings().festival_return_max_cents == 0
    for bad in ("-1", "20.5", "1000000000"):
        monkeypatch.setenv("FESTIVAL_RETURN_MAX_CENTS", bad)
        with pytest.raises(ValueError, match="festival_return_max_cents"):
            CloudSettings()
