"""The fake Stripe's large API objects are package data (cloud/stripe_fake_data/*.json)."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

from cloud import stripe_fake

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "cloud" / "stripe_fake_data"


def test_every_data_file_ships_in_the_package() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["cloud"]
    names = sorted(path.name for path in DATA.glob("*.json"))
    assert names == [
        "charge.json",
        "charge_refund.json",
        "checkout_session.json",
        "checkout_session_customer_details.json",
        "dispute.json",
        "refund.json",
    ]
    for name in names:
        assert any(fnmatch.fnmatch(f"stripe_fake_data/{name}", glob) for glob in globs), name


def test_objects_keep_stripes_field_order_and_fill_their_own_values() -> None:
    session = stripe_fake.checkout_session_object(
        amount_total=1500, created=1000, status="complete", payment_intent="pi_1"
    )
    template = json.loads((DATA / "checkout_session.json").read_text())
    assert list(session) == list(template)
    assert (session["amount_total"], session["expires_at"], session["url"]) == (1500, 87400, None)
    assert session["customer_details"]["email"] == "attendee@example.com"
    charge = stripe_fake.charge_object(payment_intent="pi_1", amount=500, amount_refunded=500)
    assert list(charge) == list(json.loads((DATA / "charge.json").read_text()))
    assert charge["refunded"] and charge["refunds"]["total_count"] == 1
    assert charge["refunds"]["data"][0]["charge"] == charge["id"]
    assert charge["payment_method_details"]["card"]["amount_authorized"] == 500


def test_every_object_is_a_fresh_copy() -> None:
    first = stripe_fake.dispute_object(charge_id="ch_1", payment_intent="pi_1", amount=5)
    first["evidence"]["receipt"] = "changed"
    second = stripe_fake.dispute_object(charge_id="ch_1", payment_intent="pi_1", amount=5)
    assert second["evidence"]["receipt"] is None
