"""Staff logins and roles through the real `festival-cloud consumer` with
FESTIVAL_STAFF_REQUIRED=true (revision 0024; PROTOCOL.md 1.1 `staff_login`/`staff_logout`,
STAFF_NOT_ALLOWED): kiosks sign over Mosquitto, the consumer checks the PIN against the stored
scrypt hash and PostgreSQL decides the login; every later request is judged by the login of
the staff member it names; a PIN is kept nowhere - not in the database, not in a dead letter,
not in the consumer's log."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker
from cloud.staff import hash_pin
from protocol.errors import ErrorCode, Status
from protocol.keys import generate_private_key
from protocol.models import StaffLogin, StaffLogout
from tests.consumer.conftest import CloudKey, LedgerDatabase
from tests.consumer.kiosk_client import KioskClient, now_ms, uuid7
from tests.consumer.site import consumer_site
from tests.consumer.support import ConsumerProcess
from tests.ledger.helpers import execute
from tests.waiting import wait_until

ROLES = {"staff-bar": "bar", "staff-gate": "checkpoint"}
PIN = "482916"
BAND = "04E5E5E5E5E5E5"
CASHIER_PIN = "135790"
CASHIER_BAND = "04E6E6E6E6E6E6"


@dataclass
class Site:
    ledger: Ledger
    owner_url: str
    bar: KioskClient
    gate: KioskClient
    consumer: ConsumerProcess
    stranger: KioskClient  # signs as staff-bar with a key the cloud does not know


def _login(kiosk: KioskClient, staff_id: str, pin: str, band: str) -> StaffLogin:
    return StaffLogin(
        request_id=uuid7(),
        kiosk_id=kiosk.kiosk_id,
        seq=kiosk.next_seq(),
        created_at_ms=now_ms(),
        card_uid=band,
        currency=kiosk.currency,
        staff_id=staff_id,
        pin=pin,
    )


def _logout(kiosk: KioskClient, staff_id: str, band: str) -> StaffLogout:
    return StaffLogout(
        request_id=uuid7(),
        kiosk_id=kiosk.kiosk_id,
        seq=kiosk.next_seq(),
        created_at_ms=now_ms(),
        card_uid=band,
        currency=kiosk.currency,
        staff_id=staff_id,
    )


@pytest.fixture(scope="module")
def site(
    ledger_database: LedgerDatabase,
    cloud_key: CloudKey,
    mosquitto_broker: MosquittoBroker,
    service_dirs: Callable[[str], Path],
) -> Iterator[Site]:
    def register_staff(ledger: Ledger) -> None:
        for staff_id, name, role, band, pin in (
            ("mia", "Mia", "bartender", BAND, PIN),
            ("cas", "Cas", "cashier", CASHIER_BAND, CASHIER_PIN),
        ):
            added = ledger.add_staff(
                staff_id=staff_id, name=name, role=role, card_uid=band, pin_hash=hash_pin(pin)
            )
            assert added == "added"

    with consumer_site(
        "staff",
        ROLES,
        ledger_database=ledger_database,
        cloud_key=cloud_key,
        broker=mosquitto_broker,
        service_dirs=service_dirs,
        prepare=register_staff,
        extra_env={"FESTIVAL_STAFF_REQUIRED": "true"},
    ) as site:
        yield Site(
            site.ledger,
            ledger_database.owner_url,
            site.kiosks["staff-bar"],
            site.kiosks["staff-gate"],
            site.consumer,
            KioskClient(
                mosquitto_broker.url("staff-bar"),
                "staff-bar",
                generate_private_key(),
                cloud_key.private_key.public_key(),
            ),
        )


def test_a_bartender_logs_in_sells_and_logs_out_and_roles_hold(site: Site) -> None:
    card = "04F1F1F1"
    # the cashier logs in at the checkpoint and tops the card up under her own id
    login = _login(site.gate, "cas", CASHIER_PIN, CASHIER_BAND)
    site.gate.send(login)
    result = site.gate.wait_result(login.request_id)
    assert (result.status, result.message) == (Status.APPROVED, "Logged in: Cas (cashier)")
    assert result.transaction_id is None and result.new_balance_cents is None
    top_up = replace(site.gate.recharge(card, 2_000), staff_id="cas")
    site.gate.send(top_up)
    assert site.gate.wait_result(top_up.request_id).approved

    # before Mia logs in, her sale is refused; a wrong PIN is refused without saying why
    sale = replace(site.bar.bar_order(card, 500), staff_id="mia")
    site.bar.send(sale)
    refused = site.bar.wait_result(sale.request_id)
    assert (refused.status, refused.error_code) == (Status.REJECTED, ErrorCode.STAFF_NOT_ALLOWED)
    wrong = _login(site.bar, "mia", "000000", BAND)
    site.bar.send(wrong)
    assert site.bar.wait_result(wrong.request_id).error_code is ErrorCode.STAFF_NOT_ALLOWED

    login = _login(site.bar, "mia", PIN, BAND)
    raw = site.bar.send(login)
    assert site.bar.wait_result(login.request_id).message == "Logged in: Mia (bartender)"
    # the payload's identity is keyed, not its plain SHA-256 (the bytes hold the PIN) ...
    stored = execute(
        site.owner_url,
        "SELECT encode(payload_sha256, 'hex') FROM processed_requests WHERE request_id = :r",
        r=login.request_id,
    )
    plain = hashlib.sha256(_jws_payload_bytes(raw)).hexdigest()
    assert len(stored) == 1 and stored[0][0] != plain
    # ... and the same bytes again are still a replay
    site.bar.send(raw)
    replayed = wait_until(
        lambda: [r for r in site.bar.results_for(login.request_id) if r.replayed],
        timeout_s=15,
        what="the replayed login",
    )[0]
    assert replayed.status is Status.APPROVED
    sale = replace(site.bar.bar_order(card, 500), staff_id="mia")
    site.bar.send(sale)
    sold = site.bar.wait_result(sale.request_id)
    assert sold.approved and sold.new_balance_cents == 1_500
    # the cashier, not logged in at the bar, cannot sell there; a bartender cannot top up
    other = replace(site.bar.bar_order(card, 500), staff_id="cas")
    site.bar.send(other)
    assert site.bar.wait_result(other.request_id).error_code is ErrorCode.STAFF_NOT_ALLOWED

    logout = _logout(site.bar, "mia", BAND)
    site.bar.send(logout)
    assert site.bar.wait_result(logout.request_id).message == "Logged out: Mia"
    after = replace(site.bar.bar_order(card, 500), staff_id="mia")
    site.bar.send(after)
    assert site.bar.wait_result(after.request_id).error_code is ErrorCode.STAFF_NOT_ALLOWED
    assert site.ledger.card(card).balance_cents == 1_500  # type: ignore[union-attr]
    assert site.ledger.check() == []
    # the logins are counted for the engineer on call: 2 approved, 1 refused (the replay is not)
    assert wait_until(
        lambda: _staff_logins(site.consumer) == {"approved": 2.0, "refused": 1.0},
        timeout_s=10,
        what="the staff login counter",
    )


def test_a_pin_is_kept_nowhere_not_even_in_a_dead_letter(site: Site) -> None:
    secret = "97531864"
    forged = _login(site.bar, "mia", secret, BAND)
    site.stranger.connect()
    try:
        site.stranger.send(forged)  # a signature the cloud cannot verify: a dead letter
        site.stranger.wait_anonymous_results(1)
    finally:
        site.stranger.close()
    letters = execute(
        site.owner_url,
        "SELECT payload FROM dead_letters WHERE kiosk_id = 'staff-bar' ORDER BY 1",
    )
    assert letters, "the forged login was kept as a dead letter"
    documents = [_jws_payload(bytes(row[0])) for row in letters]
    assert any(d.get("request_id") == forged.request_id for d in documents)
    for document in documents:
        assert document.get("pin") in (None, "[redacted]"), document
    for table in ("processed_requests", "app_transaction_log", "idempotency_keys", "dead_letters"):
        rows = execute(
            site.owner_url,
            f"SELECT count(*) FROM {table} t WHERE t::text LIKE :pattern",
            pattern=f"%{secret}%",
        )
        assert rows == [(0,)], table
    for pin in (PIN, CASHIER_PIN, secret):
        assert pin not in site.consumer.log_text(), "a PIN in the consumer's log"


def _staff_logins(consumer: ConsumerProcess) -> dict[str, float]:
    """festival_consumer_staff_logins_total by outcome, from the consumer's /metrics."""
    url = f"http://127.0.0.1:{consumer.metrics_port}/metrics"
    counts: dict[str, float] = {}
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("festival_consumer_staff_logins_total{"):
                outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
                counts[outcome] = float(line.rsplit(" ", 1)[1])
    return counts


def _jws_payload_bytes(raw: bytes) -> bytes:
    part = raw.split(b".")[1]
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


def _jws_payload(raw: bytes) -> dict[str, object]:
    """The JSON payload of a compact JWS, unverified."""
    document = json.loads(_jws_payload_bytes(raw))
    assert isinstance(document, dict)
    return document
