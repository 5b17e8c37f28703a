"""The cloud's three composition roots build their Ledger from the settings alike
(`Ledger.from_settings`): every FESTIVAL_* limit reaches the operator's CLI, the API and the
consumer, and FESTIVAL_STAFF_REQUIRED only the consumer (the POS endpoints and the operator's CLI
verbs are exempt, docs/protocol.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import pytest
from pydantic import SecretStr

import cloud.ledger
from cloud.settings import CloudSettings

UNREACHABLE_DATABASE = "postgresql://festival@127.0.0.1:1/festival"  # never connected to

# Each limit: its setting, the Ledger's attribute, and a value other than its default (so a root
# that dropped the setting would show the default).
LIMITS: Final[tuple[tuple[str, str, Any], ...]] = (
    ("festival_max_balance_cents", "max_balance_cents", 123_456),
    ("festival_max_topup_cents", "max_topup_cents", 23_456),
    ("festival_return_max_cents", "return_cents_max", 1_234),
    ("festival_menu_grace_s", "menu_grace_s", 77),
    ("festival_void_window_s", "void_window_s", 88),
    ("festival_currency", "currency", "CHF"),
)


def _settings(tmp_path: Path, *, staff_required: bool) -> CloudSettings:
    from device.keys import save_private_key
    from protocol.keys import generate_private_key

    key_file = tmp_path / "cloud.pem"
    save_private_key(generate_private_key(), key_file)  # mode 0600
    return CloudSettings(
        database_url=UNREACHABLE_DATABASE,
        mqtt_url=SecretStr("mqtt://cloud:pw@127.0.0.1:1"),
        cloud_signing_key_file=key_file,
        festival_card_auth="uid",
        festival_staff_required=staff_required,
        **{setting: value for setting, _, value in LIMITS},
    )


def _limits(ledger: cloud.ledger.Ledger) -> dict[str, object]:
    names = [attribute for _, attribute, _ in LIMITS] + ["staff_required"]
    return {name: getattr(ledger, name) for name in names}


def _expected(*, staff_required: bool) -> dict[str, object]:
    return {attribute: value for _, attribute, value in LIMITS} | {"staff_required": staff_required}


def test_the_operators_cli_gets_every_limit_and_no_staff_rule(tmp_path: Path) -> None:
    from cloud.admin import _ledger

    with _ledger(_settings(tmp_path, staff_required=True)) as ledger:
        assert _limits(ledger) == _expected(staff_required=False)


def test_the_api_gets_every_limit_and_no_staff_rule(tmp_path: Path) -> None:
    from cloud.api.app import build_ledger

    ledger = build_ledger(_settings(tmp_path, staff_required=True))
    try:
        assert isinstance(ledger, cloud.ledger.Ledger)
        assert _limits(ledger) == _expected(staff_required=False)
    finally:
        ledger.engine.dispose()


@pytest.mark.parametrize("staff_required", [True, False])
def test_the_consumer_gets_every_limit_and_festival_staff_required(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, staff_required: bool
) -> None:
    from cloud.consumer import main as consumer_main

    class Built(Exception):
        """Raised once the consumer's ledger is built: it stops before any connection."""

    built: list[cloud.ledger.Ledger] = []

    class RecordingLedger(cloud.ledger.Ledger):
        def __init__(self, engine: object, **options: object) -> None:
            super().__init__(engine, **options)  # type: ignore[arg-type]
            built.append(self)
            raise Built

    monkeypatch.setattr(cloud.ledger, "Ledger", RecordingLedger)
    monkeypatch.setattr(consumer_main, "configure_logging", lambda: None)
    with pytest.raises(Built):
        consumer_main.run(_settings(tmp_path, staff_required=staff_required))
    [ledger] = built
    assert _limits(ledger) == _expected(staff_required=staff_required)
    ledger.engine.dispose()
