"""Revision 0015: the payout procedures on a real PostgreSQL (DESIGN.md payout rules)."""

from __future__ import annotations

import json
import os

import pytest

from cloud.cli import main
from cloud.database import make_engine
from cloud.ledger import Ledger
from cloud.payouts import PayoutInvalid, PayoutRefused, PayoutStore, demo_payouts, valid_iban
from tests.ledger.helpers import bar_order, recharge, scalar

UID = "04A1B2C3D4E5F6"
IBAN = "DE89370400440532013000"


@pytest.fixture
def store(service_database_url: str, ledger: Ledger) -> PayoutStore:
    return PayoutStore(make_engine(service_database_url, pool_size=2))


def _balance(url: str) -> int:
    return int(scalar(url, "SELECT balance_cents FROM cards WHERE card_uid = :u", u=UID))


def test_the_whole_balance_leaves_split_into_donation_fee_and_bank(
    ledger: Ledger, store: PayoutStore, service_database_url: str
) -> None:
    ledger.apply(recharge(UID, 5_000, kiosk_id="checkpoint-1"))
    ledger.apply(bar_order(UID, ("Beer", 2, 450), kiosk_id="bar-1"))
    outcome = store.request(
        UID, iban=IBAN, account_holder="Ada L", donate_cents=100, fee_cents=50, request_key="k1"
    )
    assert outcome["status"] == "created"
    assert outcome["amount_cents"] == 4_100
    assert outcome["donation_cents"] == 100
    assert outcome["fee_cents"] == 50
    assert outcome["stripe_refund_cents"] == 0
    assert outcome["bank_transfer_cents"] == 3_950
    assert _balance(service_database_url) == 0
    status = scalar(service_database_url, "SELECT status FROM cards WHERE card_uid = :u", u=UID)
    assert status == "blocked"
    parts = {part.kind: part for part in store.list(card_uid=UID)}
    assert parts["bank"].state == "pending" and parts["bank"].amount_cents == 3_950
    assert parts["donation"].state == "paid"
    pending = scalar(
        service_database_url,
        "SELECT sum(p.amount_cents) FROM postings p JOIN accounts a USING (account_id)"
        " WHERE a.name = 'payout:pending'",
    )
    assert pending == 4_100
    # festival-cloud check: the payout's transaction names its payout, not a kiosk request.
    assert ledger.check() == []


def test_a_double_submit_makes_one_payout(ledger: Ledger, store: PayoutStore) -> None:
    ledger.apply(recharge(UID, 1_000, kiosk_id="checkpoint-1"))
    first = store.request(
        UID, iban=IBAN, account_holder="Ada L", donate_cents=0, fee_cents=0, request_key="tab"
    )
    second = store.request(
        UID, iban=IBAN, account_holder="Ada L", donate_cents=0, fee_cents=0, request_key="tab"
    )
    assert second["status"] == "replayed"
    assert second["payout_id"] == first["payout_id"]
    assert len(store.list(card_uid=UID)) == 1
    with pytest.raises(PayoutRefused):
        store.request(
            UID, iban=IBAN, account_holder="Ada L", donate_cents=0, fee_cents=0, request_key="x"
        )


def test_a_donation_above_the_balance_changes_nothing(
    ledger: Ledger, store: PayoutStore, service_database_url: str
) -> None:
    ledger.apply(recharge(UID, 1_000, kiosk_id="checkpoint-1"))
    with pytest.raises(PayoutInvalid):
        store.request(
            UID, iban=IBAN, account_holder="A", donate_cents=1_001, fee_cents=0, request_key="d"
        )
    assert _balance(service_database_url) == 1_000
    assert store.list(card_uid=UID) == []


def test_payout_fail_returns_the_money_and_unblocks_the_card(
    ledger: Ledger, store: PayoutStore, service_database_url: str
) -> None:
    ledger.apply(recharge(UID, 2_000, kiosk_id="checkpoint-1"))
    store.request(
        UID, iban=IBAN, account_holder="Ada L", donate_cents=0, fee_cents=30, request_key="f"
    )
    bank = next(part for part in store.list(card_uid=UID) if part.kind == "bank")
    outcome = store.fail(bank.payout_id, "account closed")
    assert outcome is not None and outcome["returned_cents"] == 1_970
    assert _balance(service_database_url) == 1_970
    status = scalar(service_database_url, "SELECT status FROM cards WHERE card_uid = :u", u=UID)
    assert status == "active"
    assert store.fail(bank.payout_id, "again") is None
    audit = scalar(
        service_database_url,
        "SELECT count(*) FROM payout_audit WHERE payout_id = CAST(:id AS uuid)",
        id=bank.payout_id,
    )
    assert audit == 2
    assert ledger.check() == []  # the return names the failed part


def test_ibans_are_checked_by_their_checksum() -> None:
    assert valid_iban("DE89 3704 0044 0532 0130 00") == IBAN
    assert valid_iban("DE89370400440532013001") is None
    assert valid_iban("not an iban") is None


def test_demo_payouts_pays_out_the_cards_with_a_balance(
    ledger: Ledger, service_database_url: str
) -> None:
    ledger.apply(recharge(UID, 700, kiosk_id="checkpoint-1"))
    engine = make_engine(service_database_url, pool_size=2)
    try:
        outcomes = demo_payouts(engine, [UID, "04FFFFFF"], fee_cents=50)
    finally:
        engine.dispose()
    assert [(o["amount_cents"], o["fee_cents"], o["bank_transfer_cents"]) for o in outcomes] == [
        (700, 50, 650)
    ]


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, *args: str
) -> tuple[int, str, str]:
    """festival-cloud in this process (the shared venv's script runs main's checkout)."""
    for key in list(os.environ):
        if key.startswith(("FESTIVAL_", "DATABASE_", "STRIPE_", "MQTT_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", url)
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_lists_payouts_and_fails_one(
    ledger: Ledger,
    store: PayoutStore,
    service_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger.apply(recharge(UID, 900, kiosk_id="checkpoint-1"))
    store.request(
        UID, iban=IBAN, account_holder="Ada", donate_cents=0, fee_cents=0, request_key="c"
    )
    url = service_database_url
    code, out, err = _cli(
        monkeypatch, capsys, url, "payout", "list", "--state", "pending", "--json"
    )
    assert code == 0, err
    [part] = json.loads(out)
    assert (part["kind"], part["amount_cents"], part["iban"]) == ("bank", 900, IBAN)
    code, out, err = _cli(
        monkeypatch, capsys, url, "payout", "fail", part["payout_id"], "--reason", "closed"
    )
    assert code == 0, err
    assert _balance(url) == 900
    code, out, err = _cli(
        monkeypatch, capsys, url, "payout", "fail", part["payout_id"], "--reason", "closed"
    )
    assert code == 1
