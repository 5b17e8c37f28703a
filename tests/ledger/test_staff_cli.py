"""`festival-cloud staff add|pin|disable|list` as the real console script (DESIGN.md 1.1): a
fresh PIN printed once and only its hash stored, a new PIN that replaces the old one, disable,
the listing without secrets; the PIN works for a staff_login as the consumer checks it."""

from __future__ import annotations

import json

from cloud.staff import verify_pin
from tests.ledger.helpers import execute, scalar
from tests.ledger.test_cli import cli

BAND = "04ABCDEF012345"


def _stored_hash(url: str, staff_id: str) -> str:
    return str(scalar(url, "SELECT pin_hash FROM staff_members WHERE staff_id = :s", s=staff_id))


def test_staff_add_prints_a_pin_once_and_stores_only_its_hash(database_url: str) -> None:
    added = cli(
        database_url, "staff", "add", "anna", "--name", "Anna K", "--role", "supervisor",
        "--card", BAND, "--json",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    document = json.loads(added.stdout)
    pin = document["pin"]
    assert document["staff_id"] == "anna" and len(pin) == 6 and pin.isdigit()
    stored = _stored_hash(database_url, "anna")
    assert pin not in stored and verify_pin(pin, stored)
    assert pin not in added.stderr

    again = cli(
        database_url, "staff", "add", "anna", "--name", "A", "--role", "cashier", "--card",
        "04ABCDEF012346",
    )  # fmt: skip
    assert again.returncode == 1 and "exists already" in again.stderr
    same_band = cli(
        database_url, "staff", "add", "ben", "--name", "Ben", "--role", "cashier", "--card", BAND
    )
    assert same_band.returncode == 1 and "another staff member's" in same_band.stderr
    text = cli(
        database_url, "staff", "add", "ben", "--name", "Ben", "--role", "bartender", "--card",
        "04ABCDEF012347",
    )  # fmt: skip
    assert text.returncode == 0 and "PIN (shown once" in text.stdout


def test_bad_input_is_a_usage_error(database_url: str) -> None:
    for args in (
        ("staff", "add", "x", "--name", "X", "--role", "cashier", "--card", "04abc"),
        ("staff", "add", "x\ty", "--name", "X", "--role", "cashier", "--card", BAND),
        ("staff", "add", "x", "--name", "", "--role", "cashier", "--card", BAND),
    ):
        result = cli(database_url, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert (
        cli(
            database_url, "staff", "add", "x", "--name", "X", "--role", "boss", "--card", BAND
        ).returncode
        == 2
    )
    assert execute(database_url, "SELECT staff_id FROM staff_members") == []


def test_pin_disable_and_list(database_url: str) -> None:
    first = json.loads(
        cli(
            database_url,
            "staff",
            "add",
            "carl",
            "--name",
            "Carl",
            "--role",
            "cashier",
            "--card",
            BAND,
            "--json",
        ).stdout
    )["pin"]
    renewed = cli(database_url, "staff", "pin", "carl", "--json")
    assert renewed.returncode == 0
    second = json.loads(renewed.stdout)["pin"]
    stored = _stored_hash(database_url, "carl")
    assert verify_pin(second, stored) and (first == second or not verify_pin(first, stored))
    assert cli(database_url, "staff", "pin", "nobody").returncode == 1

    listed = cli(database_url, "staff", "list", "--json")
    assert listed.returncode == 0
    (member,) = json.loads(listed.stdout)
    assert member == {
        "staff_id": "carl",
        "name": "Carl",
        "role": "cashier",
        "card_uid": BAND,
        "enabled": True,
        "locked_until_ms": None,
        "logged_in_at": [],
    }
    assert "scrypt" not in listed.stdout
    disabled = cli(database_url, "staff", "disable", "carl")
    assert disabled.returncode == 0 and "disabled carl" in disabled.stdout
    assert cli(database_url, "staff", "disable", "nobody").returncode == 1
    table = cli(database_url, "staff", "list")
    assert table.returncode == 0
    assert "carl" in table.stdout and " no " in table.stdout and "scrypt" not in table.stdout
