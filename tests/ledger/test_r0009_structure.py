"""Revision 0009's structure holds: each thing is built in one place (read from the definitions
the database runs), the SQL takes the protocol's own form of a request, the card UID rule is one
domain, and the new helpers are nobody's to call but the procedures'."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import exc as sa_exc

from cloud.ledger import Ledger
from cloud.ledger_records import LedgerRequest, request_document
from protocol.models import BarItem, request_to_dict
from tests.ledger.helpers import PUBLIC_KEY, bar_order, execute, recharge, scalar

OUTCOME_KEYS = {
    "debt_cents",  # (revision 0013) what the card owes after the request
    "request_id",
    "status",
    "error_code",
    "message",
    "transaction_id",
    "previous_balance_cents",
    "new_balance_cents",
    "replayed",
    "processed_at_ms",
    "order_id",
    "card_uid",
}
UID_REGEX = "[0-9A-F]{8}"
# ledger_* functions the services may call (revision 0002, 0005 and 0009's defaults).
SERVICE_LEDGER_FUNCTIONS = {"ledger_check", "ledger_check_accounts", "ledger_limit"}


def _definitions(url: str) -> dict[str, str]:
    rows = execute(
        url,
        "SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p"
        " WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f'",
    )
    return {signature: definition for signature, definition in rows}


def _holding(definitions: dict[str, str], pattern: str) -> set[str]:
    return {
        signature.split("(")[0]
        for signature, definition in definitions.items()
        if re.search(pattern, definition)
    }


def test_each_thing_is_built_in_one_function(database_url: str) -> None:
    definitions = _definitions(database_url)
    # the outcome object: only ledger_outcome names its keys to build it
    assert _holding(definitions, r"'previous_balance_cents',") == {"ledger_outcome"}
    assert _holding(definitions, r"INSERT INTO app_transaction_log") == {"ledger_log_entries"}
    assert _holding(definitions, r"INSERT INTO idempotency_keys") == {"ledger_cache_outcomes"}
    # new ids: ledger_uuid7() (a random uuid is drawn nowhere else)
    assert _holding(definitions, r"gen_random_uuid\(\)") == {"ledger_uuid7"}
    # the limits: numbers only in ledger_limit (a default, or a text cut to a length)
    assert _holding(definitions, r"DEFAULT \d") == {
        "sp_claim_topup_refunds",  # lease and retry pauses: arguments, not limits
        "sp_cleanup_topups",
        "sp_finish_topup_refund",
        "ledger_check",
        "ledger_check_accounts",
    }
    # the batch is decided in memory and written by one function
    assert _holding(definitions, r"INSERT INTO processed_requests") == {
        "ledger_write_requests",
        "sp_record_rejection",
    }


def test_the_card_uid_rule_is_one_domain(database_url: str) -> None:
    assert not _holding(_definitions(database_url), re.escape(UID_REGEX))
    constraints = execute(
        database_url,
        "SELECT coalesce(t.typname, c.relname) FROM pg_constraint k"
        " LEFT JOIN pg_type t ON t.oid = k.contypid LEFT JOIN pg_class c ON c.oid = k.conrelid"
        " WHERE k.connamespace = 'public'::regnamespace"
        " AND pg_get_constraintdef(k.oid) LIKE :regex",
        regex=f"%{UID_REGEX}%",
    )
    assert constraints == [("ledger_card_uid",)]
    assert scalar(
        database_url,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = 'cards'::regclass AND attname = 'card_uid'",
    ) == ("ledger_card_uid")
    checked = execute(
        database_url,
        "SELECT u, ledger_card_uid_valid(u) FROM unnest(ARRAY['04A1B2C3', '04A1B2C3D4E5F6',"
        " '04A1B2C3D4E5F6A7B8C9', '04a1b2c3', '04A1B2C', '', NULL]) AS u",
    )
    assert [valid for _, valid in checked] == [True, True, True, False, False, False, False]
    with pytest.raises(sa_exc.IntegrityError, match="ledger_card_uid"):
        execute(database_url, "SELECT ledger_open_card('04a1b2c3')")


def test_the_sql_takes_the_protocol_form_of_a_request(ledger: Ledger) -> None:
    cup = BarItem("Cup", 1, 200, sku="cup", is_deposit=True)
    order = bar_order("04E1E1E1", ("Beer", 1, 500), cup, trace_id="trace-1")
    topup = recharge("04E1E1E1", 5_000, method="card", checkpoint_id="gate-a")
    for item in (order, topup):
        assert request_document(item) == {
            **request_to_dict(item.request),
            "payload_sha256": item.payload_sha256,
            "source": item.source,
            "trace_id": item.trace_id,
        }
    # The form leaves out what is absent or false (here: sku, is_deposit, is_return of the beer).
    assert request_document(order)["items"][0] == {
        "name": "Beer",
        "quantity": 1,
        "unit_price_cents": 500,
    }
    # (revision 0025) a kiosk books into the drawer of the checkpoint it is registered for
    ledger.add_kiosk("checkpoint-1", PUBLIC_KEY, "checkpoint", checkpoint_id="gate-a")
    assert ledger.apply(topup).approved
    assert ledger.apply(order).new_balance_cents == 4_300
    assert ledger.deposit_balance_cents() == 200


def test_outcomes_keep_their_keys(ledger: Ledger, service_database_url: str) -> None:
    topup = recharge("04E2E2E2", 1_000)
    seen = [topup, bar_order("04E2E2E2"), bar_order("04FFFFFF"), topup]
    outcomes = scalar(
        service_database_url,
        "SELECT sp_process_batch(CAST(:requests AS jsonb), 150000, 100000, 2000)",
        requests=json.dumps([request_document(item) for item in seen]),
    )
    assert [o["status"] for o in outcomes] == ["approved", "approved", "declined", "approved"]
    assert outcomes[3]["replayed"] is True
    assert all(set(o) == OUTCOME_KEYS for o in outcomes)
    single = scalar(
        service_database_url,
        "SELECT sp_handle_request(CAST(:request AS jsonb))",
        request=json.dumps(request_document(bar_order("04E2E2E2"))),
    )
    assert set(single) == OUTCOME_KEYS and single["new_balance_cents"] == 0


def test_a_malformed_request_seen_before_still_fails(ledger: Ledger) -> None:
    """Every request is checked before anything else about it is looked at (as in 0008)."""
    item = recharge("04E3E3E3", 1_000)
    assert ledger.apply(item).approved
    broken = {**request_document(item), "payment_method": "gold"}
    with pytest.raises(sa_exc.DataError, match=r"checkpoint recharge .* needs amount_cents"):
        scalar(
            ledger.engine.url.render_as_string(hide_password=False),
            "SELECT sp_handle_request(CAST(:request AS jsonb))",
            request=json.dumps(broken),
        )
    assert ledger.apply(LedgerRequest(item.request, item.payload_sha256)).replayed


def test_the_helpers_are_the_owners_and_sp_handle_request_the_services(
    database_url: str,
) -> None:
    rows = execute(
        database_url,
        "SELECT p.proname, has_function_privilege('festival_service', p.oid, 'EXECUTE'),"
        " has_function_privilege('festival_api', p.oid, 'EXECUTE'),"
        " p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)"
        " FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace"
        " AND (p.proname LIKE 'ledger\\_%' OR p.proname = 'sp_handle_request')",
    )
    privileges = {name: (service, api, public) for name, service, api, public in rows}
    # (revision 0025) the API's role applies no request itself: sp_pos_handle_request only
    assert privileges["sp_handle_request"] == (True, False, False)
    assert privileges["ledger_limit"] == (True, True, False)
    for name, (service, api, public) in privileges.items():
        assert public is False, name
        if name not in SERVICE_LEDGER_FUNCTIONS | {"sp_handle_request"}:
            assert (service, api) == (False, False), name
