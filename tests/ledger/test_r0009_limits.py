"""Revision 0009: every bound the procedures apply comes from ledger_limit(name), and each one
equals its other copy: the Python constant, or the CHECK of the column it bounds."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import exc as sa_exc

import cloud.limits
from cloud import ledger as cloud_ledger
from cloud.ledger_records import request_document
from cloud.pos_devices import token_sha256
from protocol import limits as protocol_limits
from protocol.errors import ErrorCode
from tests.ledger.helpers import execute, recharge, scalar

# The same number on the Python side.
PYTHON_COPIES = {
    "balance_cents_max": protocol_limits.BALANCE_CENTS_MAX_DEFAULT,
    "topup_cents_max": protocol_limits.TOPUP_CENTS_MAX_DEFAULT,
    "return_cents_max": protocol_limits.RETURN_CENTS_MAX_DEFAULT,
    "menu_grace_s": protocol_limits.MENU_GRACE_S_DEFAULT,
    "void_window_s": protocol_limits.VOID_WINDOW_S_DEFAULT,
    "sun_counter_window": cloud.limits.SUN_COUNTER_WINDOW,
    "rejection_message_characters_max": cloud.limits.LEDGER_REJECTION_MESSAGE_CHARACTERS_MAX,
    "stripe_message_characters_max": cloud.limits.LEDGER_STRIPE_MESSAGE_CHARACTERS_MAX,
    "refund_error_characters_max": cloud.limits.LEDGER_REFUND_ERROR_CHARACTERS_MAX,
    "dead_letter_bytes_max": cloud_ledger.DEAD_LETTER_BYTES_MAX,
    "dead_letters_per_kiosk_minute_max": cloud_ledger.DEAD_LETTERS_PER_KIOSK_MINUTE_MAX,
}
# The column CHECKs that bound what the limit cuts to (constraint names of revisions 0001-0008).
TABLE_COPIES = {
    "reason_characters_max": ["cards_blocked_reason_check"],
    "refund_error_characters_max": ["topup_refunds_last_error_check"],
    "stripe_id_characters_max": ["topup_refunds_refund_id_check"],
    "dead_letter_bytes_max": ["dead_letters_payload_bounded"],
    "dead_letter_topic_characters_max": ["dead_letters_topic_check"],
    "dead_letter_reason_characters_max": ["dead_letters_reason_check"],
    "name_characters_max": [
        "dead_letters_kiosk_id_check",
        "dead_letters_error_code_check",
        "kiosks_firmware_check",
    ],
}
# Only in SQL: how long dead letters are kept (docs/operations.md, festival-cloud cleanup), and
# how long an outcome stays in the seed's cache (the idempotency_keys.expires_at default).
# (0016) How many replacements of a card a void follows (a chain of card swaps).
SQL_ONLY = {
    "dead_letter_days_max": 30,
    "idempotency_cache_s": 24 * 3600,
    "replacements_followed_max": 32,
}


# The limit parameters of the procedures, and the limit each defaults to.
LIMIT_PARAMETERS = {
    "p_balance_cents_max": "balance_cents_max",
    "p_topup_cents_max": "topup_cents_max",
    "p_return_cents_max": "return_cents_max",
    "p_per_minute_max": "dead_letters_per_kiosk_minute_max",
}


def _limits(url: str) -> dict[str, int]:
    source = scalar(url, "SELECT pg_get_functiondef('ledger_limit(text)'::regprocedure)")
    names = re.findall(r"WHEN '(\w+)' THEN RETURN", source)
    return {name: scalar(url, "SELECT ledger_limit(:name)", name=name) for name in names}


def test_every_limit_has_its_other_copy_and_equals_it(database_url: str) -> None:
    limits = _limits(database_url)
    assert set(limits) == set(PYTHON_COPIES) | set(TABLE_COPIES) | set(SQL_ONLY)
    for name, value in PYTHON_COPIES.items():
        assert limits[name] == value, name
    for name, constraints in TABLE_COPIES.items():
        for constraint in constraints:
            definition = scalar(
                database_url,
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :name",
                name=constraint,
            )
            assert re.search(rf"<= {limits[name]}\b", definition), (name, definition)
    assert limits["dead_letter_days_max"] == SQL_ONLY["dead_letter_days_max"]
    cache_default = scalar(
        database_url,
        "SELECT extract(epoch FROM (regexp_match(pg_get_expr(d.adbin, d.adrelid),"
        " '''([^'']+)''::interval'))[1]::interval)"
        " FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
        " WHERE d.adrelid = 'idempotency_keys'::regclass AND a.attname = 'expires_at'",
    )
    assert limits["idempotency_cache_s"] == cache_default == SQL_ONLY["idempotency_cache_s"]


def test_an_unknown_limit_is_an_error(database_url: str) -> None:
    with pytest.raises(sa_exc.DataError, match="unknown ledger limit no_such_max"):
        scalar(database_url, "SELECT ledger_limit('no_such_max')")


def test_every_limit_parameter_defaults_to_ledger_limit(database_url: str) -> None:
    defaults = execute(
        database_url,
        "SELECT p.proname, m[1], m[2] FROM pg_proc p,"
        " regexp_matches(pg_get_function_arguments(p.oid),"
        " '(p_\\w+_max) \\w+ DEFAULT ([^,]+)', 'g') AS m"
        " WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1, 2",
    )
    assert {name for name, _, _ in defaults} >= {
        "sp_process_batch",
        "sp_handle_request",
        "sp_pos_handle_request",
        "sp_process_bar_order",
        "sp_process_checkpoint_recharge",
        "sp_process_stripe_recharge",
        "sp_handle_stripe_checkout",
        "sp_record_dead_letters",
    }
    for name, parameter, default in defaults:
        limit = LIMIT_PARAMETERS[parameter]
        assert default.startswith(f"ledger_limit('{limit}'"), (name, parameter, default)
    # (0011) The grace period is a limit in seconds, not a maximum: named on its own.
    graces = execute(
        database_url,
        "SELECT p.proname, m[1] FROM pg_proc p,"
        " regexp_matches(pg_get_function_arguments(p.oid),"
        " 'p_menu_grace_s \\w+ DEFAULT ([^,]+)', 'g') AS m"
        " WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1",
    )
    assert graces == [
        ("sp_handle_request", "ledger_limit('menu_grace_s'::text)"),
        ("sp_pos_handle_request", "ledger_limit('menu_grace_s'::text)"),
        ("sp_process_batch", "ledger_limit('menu_grace_s'::text)"),
    ]


@pytest.mark.parametrize("role", ["service", "api"])
def test_the_defaults_work_for_the_services_and_are_the_protocol_defaults(
    role: str, database_url: str, service_database_url: str, api_database_url: str
) -> None:
    """The defaults are evaluated in the caller's name: both services may call ledger_limit.
    (Revision 0025: the API's role reaches the ledger as a registered POS device only.)"""
    url = service_database_url if role == "service" else api_database_url
    top = protocol_limits.TOPUP_CENTS_MAX_DEFAULT
    full = protocol_limits.BALANCE_CENTS_MAX_DEFAULT
    card = "04D5D5D5"
    device, token = "pos-limits-1", "pos-limits-1.a-token-for-this-test-only-0123456789abcd"
    scalar(
        database_url,
        "SELECT sp_add_pos_device(:device, 'checkpoint', :digest)",
        device=device,
        digest=token_sha256(token),
    )
    outcomes = []
    for amount in (top, full - top, 1):
        if role == "service":
            document = request_document(recharge(card, amount))
            sql = "SELECT sp_process_batch(CAST(:requests AS jsonb)) -> 0"
            outcomes.append(scalar(url, sql, requests=json.dumps([document])))
        else:
            seq = scalar(
                url,
                "SELECT (sp_pos_authenticate(:device, :digest) ->> 'seq')::bigint",
                device=device,
                digest=token_sha256(token),
            )
            document = request_document(
                recharge(card, amount, kiosk_id=device, seq=seq, source="http")
            )
            outcomes.append(
                scalar(
                    url,
                    "SELECT sp_pos_handle_request(:device, :token, CAST(:request AS jsonb))",
                    device=device,
                    token=token,
                    request=json.dumps(document),
                )
            )
    assert [o["status"] for o in outcomes] == ["approved", "approved", "declined"]
    assert outcomes[1]["new_balance_cents"] == full
    assert outcomes[2]["error_code"] == ErrorCode.BALANCE_LIMIT_EXCEEDED.value
