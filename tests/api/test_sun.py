"""(1.1) Genuine wristbands at the API, against the real ledger: GET /t logs a phone into the
attendee portal (a `tap` session) only for a valid, fresh SUN message, and uses its counter up;
the seed-compatible POS endpoints answer CARD_NOT_GENUINE, 403, in sun mode; the dashboard shows
SUN failures and the cloning alarm; FESTIVAL_CARD_AUTH=sun needs a 0600 CARD_MASTER_KEY_FILE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from cloud.api import create_app
from cloud.keys import generate_card_master_key, save_card_master_key
from cloud.ledger import Ledger
from cloud.settings import CloudSettings, SettingsError
from cloud.stripe_fake import FakeStripe
from protocol.errors import ErrorCode, Status
from protocol.sun import CardKeyDerivation, SunMessage, sun_message
from tests.api.conftest import (
    LOOPBACK_PEER,
    TEST_LIMITS,
    admin_headers,
    make_settings,
    pos_headers,
    scalar,
)
from tests.ledger.helpers import bar_order, recharge

UID = "04A1B2C3D4E5F6"


@pytest.fixture
def master_key(tmp_path: Path) -> tuple[bytes, Path]:
    key = generate_card_master_key()
    path = tmp_path / "card-master.key"
    save_card_master_key(key, path)
    return key, path


@pytest.fixture
def sun_settings(
    api_database_url: str, fake_stripe: FakeStripe, master_key: tuple[bytes, Path]
) -> CloudSettings:
    return make_settings(
        api_database_url,
        fake_stripe.base_url,
        festival_card_auth="sun",
        card_master_key_file=master_key[1],
    )


@pytest.fixture
def sun_client(sun_settings: CloudSettings, api_ledger: Ledger) -> Iterator[TestClient]:
    app = create_app(sun_settings, ledger=api_ledger, limits=TEST_LIMITS)
    with TestClient(app, client=LOOPBACK_PEER) as client:
        yield client


def message(master: bytes, counter: int, uid: str = UID) -> SunMessage:
    derivation = CardKeyDerivation(master)
    return sun_message(derivation.meta_key, derivation.file_key(uid), bytes.fromhex(uid), counter)


def tap(client: TestClient, sun: SunMessage) -> Any:
    return client.get(f"/t?picc_data={sun.picc_data}&cmac={sun.cmac}", follow_redirects=False)


def test_a_fresh_sun_message_logs_the_phone_in_once(
    sun_client: TestClient, ledger: Ledger, master_key: tuple[bytes, Path]
) -> None:
    ledger.apply(recharge(UID, 1_250))
    first = tap(sun_client, message(master_key[0], 5))
    assert first.status_code == 303, first.text
    assert first.headers["location"] == "/portal"
    assert first.headers["cache-control"] == "no-store"
    assert "httponly" in first.headers["set-cookie"].lower()
    card = sun_client.get("/api/portal/card")
    assert card.status_code == 200, card.text
    assert (card.json()["card_uid"], card.json()["balance_cents"]) == (UID, 1_250)
    assert card.json()["session"]["kind"] == "tap"
    sun_client.cookies.clear()
    again = tap(sun_client, message(master_key[0], 5))
    assert again.status_code == 403 and "set-cookie" not in again.headers
    assert tap(sun_client, message(master_key[0], 4)).status_code == 403
    # the portal's use counts for the kiosks too
    used = ledger.apply(replace(bar_order(UID, ("Beer", 1, 100)), sun_counter=5))
    assert used.error_code is ErrorCode.CARD_NOT_GENUINE
    assert tap(sun_client, message(master_key[0], 6)).status_code == 303


def test_a_band_with_no_card_yet_says_so(
    sun_client: TestClient, master_key: tuple[bytes, Path]
) -> None:
    answer = tap(sun_client, message(master_key[0], 2))
    assert answer.status_code == 200
    assert "no balance yet" in answer.text and "set-cookie" not in answer.headers
    assert tap(sun_client, message(master_key[0], 2)).status_code == 403, "its counter was used"


@pytest.mark.parametrize(
    "how", ["flipped_mac", "foreign", "garbage", "missing", "lower_case", "too_long"]
)
def test_anything_but_a_valid_message_is_403(
    sun_client: TestClient, ledger: Ledger, master_key: tuple[bytes, Path], how: str
) -> None:
    ledger.apply(recharge(UID, 1_000))
    genuine = message(master_key[0], 9)
    url = {
        "flipped_mac": f"/t?picc_data={genuine.picc_data}&cmac={int(genuine.cmac, 16) ^ 1:016X}",
        "foreign": "/t?picc_data={0.picc_data}&cmac={0.cmac}".format(message(bytes(16), 9)),
        "garbage": "/t?picc_data=" + "A" * 32 + "&cmac=" + "B" * 16,
        "missing": "/t",
        "lower_case": f"/t?picc_data={genuine.picc_data.lower()}&cmac={genuine.cmac.lower()}",
        "too_long": f"/t?picc_data={genuine.picc_data * 40}&cmac={genuine.cmac}",
    }[how]
    answer = sun_client.get(url, follow_redirects=False)
    assert answer.status_code == 403, answer.text
    assert "set-cookie" not in answer.headers and "not accepted" in answer.text
    assert tap(sun_client, genuine).status_code == 303, "the real message is still fresh"


def test_uid_mode_refuses_every_tap(client: TestClient, master_key: tuple[bytes, Path]) -> None:
    assert tap(client, message(master_key[0], 3)).status_code == 403


def test_the_pos_endpoints_answer_card_not_genuine_in_sun_mode(
    sun_client: TestClient, ledger: Ledger, api_database_url: str
) -> None:
    ledger.apply(recharge("04A1B2C3", 1_000))
    body = {
        "card_id": "04A1B2C3",
        "items": [{"name": "Beer", "quantity": 1, "unit_price": 5.00}],
        "total_amount": 5.00,
        "client_request_id": "sun-pos-1",
    }
    answer = sun_client.post(
        "/functions/v1/process-bar-order",
        content=json.dumps(body),
        headers=pos_headers(**{"Content-Type": "application/json"}),
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["error_code"] == "CARD_NOT_GENUINE"
    assert ledger.card("04A1B2C3").balance_cents == 1_000  # type: ignore[union-attr]


def test_the_dashboard_shows_sun_failures_and_the_cloning_alarm(
    sun_client: TestClient, ledger: Ledger, owner_engine: Engine
) -> None:
    quiet = sun_client.get("/api/monitoring/dashboard", headers=admin_headers()).json()["sun"]
    assert quiet["card_auth"] == "sun" and quiet["cloning_alarm"] is False
    ledger.apply(recharge(UID, 5_000))
    assert ledger.apply(replace(bar_order(UID, ("Beer", 1, 100)), sun_counter=10)).approved
    for counter in (10, 9, 8):  # a clone replaying captured messages
        outcome = ledger.apply(replace(bar_order(UID, ("Beer", 1, 100)), sun_counter=counter))
        assert outcome.status is Status.DECLINED
    ledger.apply(replace(bar_order(UID, ("Beer", 1, 100)), sun_failure="missing"))
    sun = sun_client.get("/api/monitoring/dashboard", headers=admin_headers()).json()["sun"]
    assert sun["failures_by_reason"] == {"stale_counter": 3, "missing": 1}
    assert (sun["stale_counter_recent"], sun["stale_counter_before"]) == (3, 0)
    assert sun["cloning_alarm"] is True
    assert [card["card_uid"] for card in sun["stale_cards"]] == [UID]
    # the same count 20 minutes ago, and as many now: steady, no alarm
    with owner_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO sun_failure_minutes (minute, reason, failures)"
                " VALUES (date_trunc('minute', now()) - interval '20 minutes', 'stale_counter', 3)"
            )
        )
    steady = sun_client.get("/api/monitoring/dashboard", headers=admin_headers()).json()["sun"]
    assert (steady["stale_counter_recent"], steady["stale_counter_before"]) == (3, 3)
    assert steady["cloning_alarm"] is False
    assert scalar(owner_engine, "SELECT sum(failures) FROM sun_failure_minutes") == 7


def test_sun_mode_needs_a_private_master_key(
    api_database_url: str, fake_stripe: FakeStripe, tmp_path: Path
) -> None:
    no_key = make_settings(api_database_url, fake_stripe.base_url, festival_card_auth="sun")
    with pytest.raises(SettingsError, match="CARD_MASTER_KEY_FILE"):
        no_key.card_master_key()
    path = tmp_path / "open.key"
    path.write_text("00" * 16 + "\n")
    path.chmod(0o644)
    readable = make_settings(
        api_database_url, fake_stripe.base_url, festival_card_auth="sun", card_master_key_file=path
    )
    with pytest.raises(SettingsError, match="CARD_MASTER_KEY_FILE") as raised:
        readable.card_master_key()
    assert "00000000" not in str(raised.value), "the key is never quoted"
    with pytest.raises(ValueError):
        make_settings(api_database_url, fake_stripe.base_url, festival_card_auth="magic")
    uid_mode = make_settings(api_database_url, fake_stripe.base_url, card_master_key_file=path)
    assert uid_mode.card_master_key() is None, "uid mode never reads the key"
