"""Code nothing called (issue 12, section 5) stays deleted; test-only helpers live in tests/."""

from __future__ import annotations

import importlib

import pytest

GONE = [
    ("device.indicators", "fake_indicators"),
    ("cloud.consumer.mqtt_link", "MqttLink.outgoing_queued"),
    ("protocol.models", "validate_request_id"),
    ("protocol.models", "validate_card_uid"),
    ("protocol.codec", "decode_request"),
    ("protocol.codec", "result_for_error"),
    ("protocol", "decode_request"),
    ("protocol", "result_for_error"),
    ("device.kiosk", "run_from_env"),  # moved to device.main
    ("cloud.demo", "Kiosk"),
    ("cloud.api.refunds", "RefundTally.owed_left"),
    ("device.virtual_card", "VirtualCard.inserted"),
    ("tests.consumer.support", "wait_for_exit"),
    ("tests.ledger.helpers", "uids"),  # renamed DemoKiosk: never confused with device.kiosk.Kiosk
]


@pytest.mark.parametrize(("module", "name"), GONE)
def test_dead_code_stays_deleted(module: str, name: str) -> None:
    found: object = importlib.import_module(module)
    for part in name.split("."):
        if not hasattr(found, part):
            return
        found = getattr(found, part)
    pytest.fail(f"{module}.{name} is back: nothing in the product calls it")


def test_the_test_only_helpers_live_in_the_tests() -> None:
    from tests.protocol import support

    assert callable(support.decode_request) and callable(support.result_for_error)
