"""Revision 0025: the API's role applies no kiosk request itself (issue 11 item 11, DESIGN.md
"least privilege per process"), and the ledger keeps a kiosk's top-up to the drawer of the
checkpoint the kiosk is registered for (PROTOCOL.md 1.1 `checkpoint_id`; until now only the
consumer checked it, cloud/consumer/decisions.py _bind_checkpoint).

Against the real PostgreSQL through the service role, as the consumer calls it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cloud import database
from cloud.ledger import Ledger
from protocol.errors import ErrorCode, Status
from tests.ledger.helpers import PUBLIC_KEY, bar_order, recharge, scalar
from tests.ledger.test_r0009_migration import _differences, _schema

REVISION = "0025"
PREVIOUS = "0024"
CARD = "04A1B2C3D4E5F6"
# what revision 0025 takes from the API's role (DESIGN.md "least privilege per process")
TAKEN = (
    "sp_handle_request",
    "sp_process_bar_order",
    "sp_process_checkpoint_recharge",
    "sp_record_rejection",
)
API_CAN = """
SELECT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY (:names)
   AND has_function_privilege('festival_api', p.oid, 'EXECUTE')
 ORDER BY 1
"""


@pytest.fixture
def gate(ledger: Ledger) -> Ledger:
    """checkpoint-1 registered for checkpoint gate-a (`kiosk add --checkpoint gate-a`)."""
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint", checkpoint_id="gate-a")
    return ledger


def _drawers(url: str) -> list[str]:
    return list(
        scalar(url, "SELECT coalesce(array_agg(checkpoint_id ORDER BY 1), '{}') FROM recharges")
    )


def test_a_kiosks_topup_into_another_drawer_is_refused_and_stored(
    gate: Ledger, database_url: str
) -> None:
    foreign = recharge(CARD, 50_000, checkpoint_id="checkpoint-1")
    outcome = gate.apply(foreign)
    assert (outcome.status, outcome.error_code) == (Status.REJECTED, ErrorCode.INVALID_REQUEST)
    assert outcome.message == "checkpoint_id 'checkpoint-1' is not this kiosk's checkpoint 'gate-a'"
    again = gate.apply(foreign)
    assert again.replayed and again.error_code == ErrorCode.INVALID_REQUEST
    assert gate.card(CARD) is None
    assert _drawers(database_url) == []
    assert scalar(database_url, "SELECT status FROM processed_requests") == "rejected"


def test_a_kiosks_topup_without_checkpoint_id_books_into_its_registered_drawer(
    gate: Ledger, database_url: str
) -> None:
    assert gate.apply(recharge(CARD, 1_000)).approved
    assert gate.apply(recharge(CARD, 2_000, checkpoint_id="gate-a")).approved
    assert _drawers(database_url) == ["gate-a", "gate-a"]
    assert (
        scalar(
            database_url,
            "SELECT count(*) FROM accounts WHERE name IN ('cash:checkpoint-1', 'cash:gate-a')",
        )
        == 1
    )


def test_a_batch_with_a_foreign_topup_keeps_its_order(gate: Ledger, database_url: str) -> None:
    first = recharge(CARD, 5_000)
    foreign = recharge(CARD, 1_000, checkpoint_id="checkpoint-2")
    order = bar_order(CARD, ("Beer", 1, 450))
    outcomes = gate.apply_batch([first, foreign, order, first])
    assert [o.request_id for o in outcomes] == [
        first.request.request_id,
        foreign.request.request_id,
        order.request.request_id,
        first.request.request_id,
    ]
    assert [o.status for o in outcomes] == [
        Status.APPROVED,
        Status.REJECTED,
        Status.APPROVED,
        Status.APPROVED,
    ]
    assert outcomes[1].error_code == ErrorCode.INVALID_REQUEST
    assert outcomes[3].replayed
    assert gate.card(CARD).balance_cents == 5_000 - 450  # type: ignore[union-attr]


def test_a_pos_device_and_an_unregistered_sender_are_not_judged_by_kiosks(
    ledger: Ledger, database_url: str
) -> None:
    """The rule reads kiosks.checkpoint_id: a request of no registered kiosk is left as it was
    (the POS entry point keeps a device to its own drawer, sp_pos_handle_request)."""
    assert ledger.apply(recharge(CARD, 1_000, kiosk_id="checkpoint-9", checkpoint_id="x")).approved
    assert _drawers(database_url) == ["x"]


def test_downgrade_restores_revision_0024_exactly_and_the_api_role_loses_its_calls(
    make_database: Callable[..., str],
) -> None:
    url = make_database()
    database.upgrade(url, PREVIOUS)
    before = _schema(url)
    names = list(TAKEN)
    assert [r for (r,) in _rows(url, API_CAN, names)] == sorted(TAKEN)
    database.upgrade(url, REVISION)
    assert _schema(url) != before
    assert _rows(url, API_CAN, names) == []
    assert _rows(url, API_CAN, ["sp_pos_handle_request"]) == [("sp_pos_handle_request",)]
    database.downgrade(url, PREVIOUS)
    assert _schema(url) == before, _differences(before, _schema(url))
    database.upgrade(url, REVISION)
    assert database.current_revision(url) == REVISION


def _rows(url: str, sql: str, names: list[str]) -> list[tuple[object, ...]]:
    from tests.ledger.helpers import execute

    return execute(url, sql, names=names)
