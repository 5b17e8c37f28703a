"""Revision 0020 and `payout export` / `payout mark-paid`: the bank parts of payouts on a real
PostgreSQL, the SEPA file checked against the pain.001.001.03 schema sepaxml ships (the ISO
20022 original) with xmlschema."""

from __future__ import annotations

import datetime
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sepaxml
import xmlschema

from cloud import database
from cloud.cli import main
from cloud.database import Engine, make_engine, text
from cloud.ledger import Ledger
from cloud.payout_export import (
    NAMESPACE,
    Debtor,
    ExportedPart,
    build_transfer_file,
    end_to_end_id,
    export_payouts,
    mark_paid,
    payout_id_of,
    sepa_text,
)
from cloud.payouts import PayoutStore
from tests.ledger.helpers import execute, recharge, scalar

IBAN = "DE89370400440532013000"
DEBTOR = Debtor(name="Festival GmbH", iban="DE02120300000000202051", bic="BYLADEM1001")
DEBTOR_ENV = {
    "FESTIVAL_PAYOUT_DEBTOR_NAME": "Festival GmbH",
    "FESTIVAL_PAYOUT_DEBTOR_IBAN": "DE02 1203 0000 0000 2020 51",
    "FESTIVAL_PAYOUT_DEBTOR_BIC": "BYLADEM1001",
}
SCHEMA = xmlschema.XMLSchema(str(Path(sepaxml.__file__).parent / "schemas" / "pain.001.001.03.xsd"))
NS = {"p": NAMESPACE}
# Three attendees: (card, top-up, donation, fee, account holder) -> bank part = top-up - both.
ATTENDEES = [
    ("04A1B2C3D4E5F6", 5_000, 100, 50, "Ada Lovelace"),
    ("04A1B2C3D4E5F7", 1_234, 0, 0, "Zoë Müller-Lüdenscheidt & Söhne"),
    ("04A1B2C3D4E5F8", 99_999, 0, 1, "\U0001f3b8\U0001f3b6"),  # no SEPA letter at all
]


@pytest.fixture
def engine(service_database_url: str) -> Iterator[Engine]:
    engine = make_engine(service_database_url, pool_size=3)
    yield engine
    engine.dispose()


@pytest.fixture
def bank_parts(ledger: Ledger, engine: Engine) -> dict[str, tuple[str, int]]:
    """Each attendee's payout requested: card -> (bank part id, bank part cents)."""
    store = PayoutStore(engine)
    parts = {}
    for seq, (uid, topup, donation, fee, holder) in enumerate(ATTENDEES, start=1):
        ledger.apply(recharge(uid, topup, kiosk_id="checkpoint-1", seq=seq))
        store.request(
            uid, iban=IBAN, account_holder=holder, donate_cents=donation, fee_cents=fee,
            request_key=f"k-{uid}",
        )  # fmt: skip
        [bank] = [part for part in store.list(card_uid=uid) if part.kind == "bank"]
        assert bank.amount_cents == topup - donation - fee
        parts[uid] = (bank.payout_id, bank.amount_cents)
    return parts


def _cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    *args: str,
    debtor: bool = True,
) -> tuple[int, str, str]:
    """festival-cloud in this process (the shared venv's script runs main's checkout)."""
    for key in list(os.environ):
        if key.startswith(("FESTIVAL_", "DATABASE_", "STRIPE_", "MQTT_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", url)
    if debtor:
        for key, value in DEBTOR_ENV.items():
            monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _states(url: str) -> dict[str, str]:
    return dict(execute(url, "SELECT payout_id::text, state FROM payouts WHERE kind = 'bank'"))


def _audit(url: str, payout_id: str) -> list[tuple[str | None, str, str]]:
    return [
        (row[0], row[1], row[2])
        for row in execute(
            url,
            "SELECT from_state, to_state, reason FROM payout_audit"
            " WHERE payout_id = CAST(:id AS uuid) ORDER BY audit_id",
            id=payout_id,
        )
    ]


def _account(url: str, name: str) -> int:
    return int(
        scalar(
            url,
            "SELECT coalesce(sum(p.amount_cents), 0) FROM postings p"
            " JOIN accounts a USING (account_id) WHERE a.name = :name",
            name=name,
        )
    )


def _transfers(path: Path) -> dict[str, tuple[int, str, str, str]]:
    """End-to-end id -> (cents, currency, creditor name, creditor IBAN) of a SEPA file."""
    root = ET.parse(path).getroot()  # noqa: S314 - our own export
    transfers = {}
    for node in root.iterfind("p:CstmrCdtTrfInitn/p:PmtInf/p:CdtTrfTxInf", NS):
        amount = node.find("p:Amt/p:InstdAmt", NS)
        assert amount is not None and amount.text is not None
        euros, cents = amount.text.split(".")
        transfers[node.findtext("p:PmtId/p:EndToEndId", namespaces=NS) or ""] = (
            int(euros) * 100 + int(cents),
            amount.get("Ccy", ""),
            node.findtext("p:Cdtr/p:Nm", namespaces=NS) or "",
            node.findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=NS) or "",
        )
    return transfers


def test_export_writes_a_schema_valid_file_and_marks_exactly_those_parts(
    bank_parts: dict[str, tuple[str, int]],
    ledger: Ledger,
    service_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = service_database_url
    out = tmp_path / "payouts.xml"
    code, stdout, stderr = _cli(monkeypatch, capsys, url, "payout", "export", "--out", str(out))
    assert code == 0, stderr
    total = sum(cents for _, cents in bank_parts.values())
    assert total == 4_850 + 1_234 + 99_998
    assert f"exported 3 bank transfer(s), total {total // 100}.{total % 100:02d} EUR" in stdout

    SCHEMA.validate(str(out))  # raises on any schema violation
    root = ET.parse(out).getroot()  # noqa: S314 - our own export
    header = root.find("p:CstmrCdtTrfInitn/p:GrpHdr", NS)
    assert header is not None
    assert header.findtext("p:NbOfTxs", namespaces=NS) == "3"
    assert header.findtext("p:CtrlSum", namespaces=NS) == "1060.82"
    message_id = header.findtext("p:MsgId", namespaces=NS)
    assert message_id and message_id in stdout
    [batch] = root.findall("p:CstmrCdtTrfInitn/p:PmtInf", NS)
    assert batch.findtext("p:Dbtr/p:Nm", namespaces=NS) == "Festival GmbH"
    assert batch.findtext("p:DbtrAcct/p:Id/p:IBAN", namespaces=NS) == DEBTOR.iban
    assert batch.findtext("p:DbtrAgt/p:FinInstnId/p:BIC", namespaces=NS) == "BYLADEM1001"
    assert batch.findtext("p:ReqdExctnDt", namespaces=NS) == (
        datetime.datetime.now(datetime.UTC).date().isoformat()
    )
    ada, zoe, emoji = (bank_parts[uid] for uid, *_ in ATTENDEES)
    assert _transfers(out) == {
        ada[0].replace("-", ""): (4_850, "EUR", "Ada Lovelace", IBAN),
        zoe[0].replace("-", ""): (1_234, "EUR", "Zoe Muller-Ludenscheidt Sohne", IBAN),
        emoji[0].replace("-", ""): (99_998, "EUR", "Wristband 04A1B2C3D4E5F8", IBAN),
    }

    assert set(_states(url).values()) == {"exported"}
    for payout_id, _ in bank_parts.values():
        [requested, exported] = _audit(url, payout_id)
        assert requested[:2] == (None, "pending")
        assert exported[:2] == ("pending", "exported") and message_id in exported[2]
    # Exporting moves no money: the parts are still owed, on payout:pending.
    assert _account(url, "payout:pending") == 5_000 + 1_234 + 99_999
    assert ledger.check() == []

    # A second export: nothing is pending, so nothing is written.
    again = tmp_path / "again.xml"
    code, stdout, stderr = _cli(monkeypatch, capsys, url, "payout", "export", "--out", str(again))
    assert code == 0, stderr
    assert "nothing exported, no file written" in stdout
    assert not again.exists()
    assert sorted(os.listdir(tmp_path)) == ["payouts.xml"]  # no temporary file left


def test_mark_paid_pays_the_exported_parts_once(
    bank_parts: dict[str, tuple[str, int]],
    ledger: Ledger,
    service_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = service_database_url
    out = tmp_path / "payouts.xml"
    assert _cli(monkeypatch, capsys, url, "payout", "export", "--out", str(out))[0] == 0
    total = sum(cents for _, cents in bank_parts.values())

    code, stdout, stderr = _cli(monkeypatch, capsys, url, "payout", "mark-paid", "--file", str(out))
    assert code == 0, stderr
    assert f"marked 3 bank transfer(s) paid, total {total // 100}.{total % 100:02d} EUR" in stdout
    assert set(_states(url).values()) == {"paid"}
    for payout_id, _ in bank_parts.values():
        assert [row[:2] for row in _audit(url, payout_id)] == [
            (None, "pending"),
            ("pending", "exported"),
            ("exported", "paid"),
        ]
    # The money left the festival: off payout:pending (only donations and fees stay there), onto
    # the festival's bank account (+: money out of it), one payout_paid transaction per part.
    assert _account(url, "payout:pending") == 5_000 + 1_234 + 99_999 - total
    assert _account(url, "bank:festival") == total
    assert scalar(url, "SELECT count(*) FROM transactions WHERE kind = 'payout_paid'") == 3
    assert scalar(url, "SELECT kind FROM accounts WHERE name = 'bank:festival'") == "bank"
    assert ledger.check() == []
    # The cards stay blocked: their money is gone.
    assert {row[0] for row in execute(url, "SELECT status FROM cards")} == {"blocked"}

    # Again: idempotent, and it says so.
    code, stdout, stderr = _cli(monkeypatch, capsys, url, "payout", "mark-paid", "--file", str(out))
    assert code == 0, stderr
    assert "3 already paid: unchanged" in stdout and "nothing changed" in stdout
    assert scalar(url, "SELECT count(*) FROM transactions WHERE kind = 'payout_paid'") == 3
    assert scalar(url, "SELECT count(*) FROM payout_audit WHERE to_state = 'paid'") == 6  # 3 + 3
    assert _account(url, "bank:festival") == total
    assert ledger.check() == []


def test_mark_paid_reports_unknown_ids_and_refuses_changed_amounts(
    bank_parts: dict[str, tuple[str, int]],
    engine: Engine,
    service_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = service_database_url
    export_payouts(engine, tmp_path / "real.xml", DEBTOR, currency="EUR")
    ada_id, ada_cents = bank_parts["04A1B2C3D4E5F6"]
    stranger = str(uuid.uuid4())
    day = datetime.date(2026, 9, 1)

    def part(payout_id: str, cents: int) -> ExportedPart:
        return ExportedPart(payout_id, str(uuid.uuid4()), "04A1B2C3D4E5F6", cents, IBAN, "Ada")

    unknown = tmp_path / "unknown.xml"
    unknown.write_bytes(
        build_transfer_file(
            [part(ada_id, ada_cents), part(stranger, 700)], DEBTOR, execution_date=day
        )
    )
    code, stdout, stderr = _cli(
        monkeypatch, capsys, url, "payout", "mark-paid", "--file", str(unknown)
    )
    assert code == 1
    assert f"{stranger.replace('-', '')}: names no bank payout" in stderr
    assert "marked 1 bank transfer(s) paid, total 48.50 EUR" in stdout  # the known one is paid
    assert _states(url)[ada_id] == "paid"

    # A file whose amount differs from the part's is not the exported file: nothing is marked.
    zoe_id, zoe_cents = bank_parts["04A1B2C3D4E5F7"]
    forged = tmp_path / "forged.xml"
    forged.write_bytes(
        build_transfer_file([part(zoe_id, zoe_cents + 1)], DEBTOR, execution_date=day)
    )
    code, stdout, stderr = _cli(
        monkeypatch, capsys, url, "payout", "mark-paid", "--file", str(forged)
    )
    assert code == 1
    assert "amounts differ" in stderr and "nothing marked" in stderr
    assert _states(url)[zoe_id] == "exported"

    not_sepa = tmp_path / "not-sepa.xml"
    not_sepa.write_text("<Document><Other/></Document>")
    code, _, stderr = _cli(monkeypatch, capsys, url, "payout", "mark-paid", "--file", str(not_sepa))
    assert code == 1 and "is not a SEPA credit-transfer file" in stderr


def test_a_failed_exported_part_returns_the_money_and_is_not_paid_later(
    bank_parts: dict[str, tuple[str, int]],
    ledger: Ledger,
    engine: Engine,
    service_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = service_database_url
    out = tmp_path / "payouts.xml"
    assert export_payouts(engine, out, DEBTOR, currency="EUR").count == 3
    zoe_id, zoe_cents = bank_parts["04A1B2C3D4E5F7"]
    # The bank reports the end-to-end id of a returned transfer: `payout fail` takes it as it is.
    code, _, stderr = _cli(
        monkeypatch, capsys, url, "payout", "fail", end_to_end_id(zoe_id), "--reason", "closed"
    )
    assert code == 0, stderr
    balance = scalar(url, "SELECT balance_cents FROM cards WHERE card_uid = '04A1B2C3D4E5F7'")
    assert balance == zoe_cents
    assert scalar(url, "SELECT status FROM cards WHERE card_uid = '04A1B2C3D4E5F7'") == "active"
    assert [row[:2] for row in _audit(url, zoe_id)][-1] == ("exported", "failed")

    code, stdout, stderr = _cli(monkeypatch, capsys, url, "payout", "mark-paid", "--file", str(out))
    assert code == 0, stderr
    assert "marked 2 bank transfer(s) paid" in stdout
    assert f"{zoe_id}: failed meanwhile" in stderr
    assert _states(url)[zoe_id] == "failed"
    assert scalar(url, "SELECT balance_cents FROM cards WHERE card_uid = '04A1B2C3D4E5F7'") == (
        zoe_cents
    )
    assert ledger.check() == []


def test_export_refuses_without_the_debtor_and_marks_nothing(
    bank_parts: dict[str, tuple[str, int]],
    service_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = service_database_url
    out = tmp_path / "payouts.xml"
    code, _, stderr = _cli(
        monkeypatch, capsys, url, "payout", "export", "--out", str(out), debtor=False
    )
    assert code == 2
    for name in DEBTOR_ENV:
        assert name in stderr
    monkeypatch.setenv("FESTIVAL_PAYOUT_DEBTOR_IBAN", "DE02120300000000202052")  # bad checksum
    for key in ("FESTIVAL_PAYOUT_DEBTOR_NAME", "FESTIVAL_PAYOUT_DEBTOR_BIC"):
        monkeypatch.setenv(key, DEBTOR_ENV[key])
    code = main(["payout", "export", "--out", str(out)])
    assert code == 2
    assert "FESTIVAL_PAYOUT_DEBTOR_IBAN is not a valid IBAN" in capsys.readouterr().err
    assert not out.exists()
    assert set(_states(url).values()) == {"pending"}


def test_nothing_is_marked_when_the_file_cannot_be_written(
    bank_parts: dict[str, tuple[str, int]],
    engine: Engine,
    service_database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = service_database_url

    def disk_full(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "link", disk_full)
        with pytest.raises(OSError, match="No space left"):
            export_payouts(engine, tmp_path / "payouts.xml", DEBTOR, currency="EUR")
    assert set(_states(url).values()) == {"pending"}
    assert os.listdir(tmp_path) == []  # the temporary file is gone too
    assert scalar(url, "SELECT count(*) FROM payout_audit WHERE to_state = 'exported'") == 0

    # An existing file is never overwritten (it may be the last export, not yet at the bank).
    existing = tmp_path / "payouts.xml"
    existing.write_text("earlier export")
    with pytest.raises(Exception, match="exists already"):
        export_payouts(engine, existing, DEBTOR, currency="EUR")
    with pytest.raises(Exception, match="in EUR"):
        export_payouts(engine, tmp_path / "chf.xml", DEBTOR, currency="CHF")
    assert existing.read_text() == "earlier export"
    assert set(_states(url).values()) == {"pending"}

    # Then the write works: all three, once.
    result = export_payouts(engine, tmp_path / "second.xml", DEBTOR, currency="EUR")
    assert result.count == 3 and set(_states(url).values()) == {"exported"}


def test_two_concurrent_exports_never_share_a_part(
    bank_parts: dict[str, tuple[str, int]],
    engine: Engine,
    service_database_url: str,
    tmp_path: Path,
) -> None:
    url = service_database_url
    first = make_engine(url, pool_size=1)
    try:
        with first.connect() as connection:
            transaction = connection.begin()
            held = connection.execute(
                text("SELECT payout_id::text FROM sp_payout_export('first')")
            ).all()
            assert len(held) == 3
            # The second export runs while the first holds its parts: it gets none of them.
            second = export_payouts(engine, tmp_path / "second.xml", DEBTOR, currency="EUR")
            assert second.count == 0 and not (tmp_path / "second.xml").exists()
            transaction.rollback()  # the first export's file could not be written
        assert set(_states(url).values()) == {"pending"}
        third = export_payouts(engine, tmp_path / "third.xml", DEBTOR, currency="EUR")
        assert {part.payout_id for part in third.parts} == {pid for pid, _ in bank_parts.values()}
        assert export_payouts(engine, tmp_path / "fourth.xml", DEBTOR, currency="EUR").count == 0
    finally:
        first.dispose()


def test_mark_paid_through_the_library_reports_each_outcome(
    bank_parts: dict[str, tuple[str, int]], engine: Engine, tmp_path: Path
) -> None:
    out = tmp_path / "payouts.xml"
    export_payouts(engine, out, DEBTOR, currency="EUR")
    first = mark_paid(engine, out)
    assert sorted(first.marked) == sorted(pid for pid, _ in bank_parts.values())
    assert first.marked_cents == sum(cents for _, cents in bank_parts.values())
    second = mark_paid(engine, out)
    assert second.marked == () and sorted(second.already_paid) == sorted(first.marked)
    assert second.unknown == () and second.failed == ()


def test_end_to_end_ids_and_sepa_text() -> None:
    payout_id = "0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"
    assert end_to_end_id(payout_id) == "0190a5b27c3d7e4f8a9b0c1d2e3f4a5b"
    assert len(end_to_end_id(payout_id)) == 32  # SEPA allows 35
    assert payout_id_of(end_to_end_id(payout_id)) == payout_id
    assert payout_id_of("NOTPROVIDED") is None
    assert sepa_text("Zoë  Ümlaut & Co. <GmbH>", 70) == "Zoe Umlaut Co. GmbH"
    assert sepa_text("x" * 80, 70) == "x" * 70


def test_revision_0020_downgrades_to_exactly_0019(make_database: Callable[..., str]) -> None:
    url = make_database()
    database.upgrade(url, "0019")
    before = _schema(url)
    database.upgrade(url, "0020")
    assert _schema(url) != before
    database.downgrade(url, "0019")
    assert _schema(url) == before
    database.upgrade(url, "head")


def _schema(url: str) -> list[tuple[str, ...]]:
    """Every function's definition and ACL, every constraint and index of ours."""
    functions = execute(
        url,
        "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), coalesce(p.proacl::text, '')"
        " FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'"
        " ORDER BY 1",
    )
    constraints = execute(
        url,
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    )
    indexes = execute(
        url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
    )
    return [tuple(row) for row in [*functions, *constraints, *indexes]]


def test_the_export_s_own_schema_check_agrees_with_xmlschema() -> None:
    """`payout export` checks the file with libxml2 (lxml, fast); the tests' reference is the
    pure-Python xmlschema over the same XSD: a good file passes both, a broken one fails both."""
    from cloud.payout_export import PayoutExportError, check_schema

    good = build_transfer_file(
        [ExportedPart(str(uuid.uuid4()), str(uuid.uuid4()), "04A1B2C3D4E5F6", 1_234, IBAN, "Ada")],
        DEBTOR,
        execution_date=datetime.date(2026, 8, 4),
        validate=False,
    )
    check_schema(good)
    SCHEMA.validate(good.decode())
    broken = good.replace(b"<ChrgBr>SLEV</ChrgBr>", b"<ChrgBr>FREE</ChrgBr>")  # not an enum value
    assert broken != good
    with pytest.raises(PayoutExportError, match="does not validate"):
        check_schema(broken)
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        SCHEMA.validate(broken.decode())
    with pytest.raises(PayoutExportError, match="not XML"):
        check_schema(b"<Document")


def test_the_money_cycle_follows_the_payouts_to_the_bank(
    bank_parts: dict[str, tuple[str, int]],
    service_database_url: str,
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`report liability`'s money cycle (issue 16 §2): what came in equals where it is now —
    after the requests in the payouts account, after mark-paid paid out by bank, but for the
    donations and fees the festival kept."""
    from cloud.reports import Reports

    came_in = sum(topup for _, topup, _, _, _ in ATTENDEES)
    kept = sum(donation + fee for _, _, donation, fee, _ in ATTENDEES)
    banked = sum(cents for _, cents in bank_parts.values())
    reports = Reports(engine, currency="EUR")
    before = reports.money_cycle()
    assert (before["in_cents"], before["on_cards_cents"]) == (came_in, 0)
    assert (before["payouts_account_cents"], before["paid_by_bank_cents"]) == (came_in, 0)
    assert before["balanced"] is True
    out = tmp_path / "payouts.xml"
    url = service_database_url
    assert _cli(monkeypatch, capsys, url, "payout", "export", "--out", str(out))[0] == 0
    assert _cli(monkeypatch, capsys, url, "payout", "mark-paid", "--file", str(out))[0] == 0
    after = reports.money_cycle()
    assert (after["payouts_account_cents"], after["paid_by_bank_cents"]) == (kept, banked)
    assert after["in_cents"] == came_in == kept + banked and after["balanced"] is True
