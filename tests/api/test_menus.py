"""(1.1, issue 13 §2) The admin API for central menus: PUT /api/admin/menus, GET and DELETE
/api/admin/kiosks/{id}/menu, and the config versions in GET /api/monitoring/kiosks. Real HTTP
through the app, real PostgreSQL behind it; the app connects as festival_api, so every test
here also shows that role suffices. Issuing is all or nothing, and only issuing: the publisher
sends (tests/consumer/, and the dashboard's end-to-end test)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cloud.ledger import Ledger
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import parse_menu
from tests.api.conftest import admin_headers, rows, scalar

KIOSKS = (("bar-1", "bar"), ("bar-2", "bar"), ("checkpoint-1", "checkpoint"), ("gate-b", "all"))

MENU: dict[str, Any] = {
    "menu_id": "summer-2026",
    "items": [
        {"sku": "beer", "name": "Beer 0.5 l", "unit_price_cents": 450, "vat_rate_bp": 1900},
        {"sku": "water", "name": "Water", "unit_price_cents": 250, "category": "soft"},
        {"sku": "cup", "name": "Cup deposit", "unit_price_cents": 200, "is_deposit": True},
        {
            "sku": "cup-back",
            "name": "Cup returned",
            "unit_price_cents": 200,
            "is_deposit": True,
            "is_return": True,
        },
    ],
}


@pytest.fixture
def kiosks(ledger: Ledger) -> list[str]:
    key = public_key_b64(generate_private_key())
    for kiosk_id, role in KIOSKS:
        ledger.add_kiosk(kiosk_id, key, role)
    ledger.disable_kiosk("gate-b")
    return [kiosk_id for kiosk_id, _ in KIOSKS]


def latest_versions(engine: Engine) -> dict[str, int]:
    return {
        row["kiosk_id"]: row["version"]
        for row in rows(
            engine, "SELECT kiosk_id, max(version) AS version FROM kiosk_configs GROUP BY kiosk_id"
        )
    }


def configs_issued(engine: Engine) -> int:
    return int(scalar(engine, "SELECT count(*) FROM kiosk_configs"))


def put(client: TestClient, body: object, **headers: str) -> Any:
    return client.put("/api/admin/menus", json=body, headers={**admin_headers(), **headers})


def test_every_route_refuses_a_missing_or_wrong_token(
    client: TestClient, kiosks: list[str], engine: Engine
) -> None:
    before = configs_issued(engine)
    for headers in ({}, {"Authorization": "Bearer not-the-admin-token"}):
        answers = [
            client.put("/api/admin/menus", json={"menu": MENU, "all": True}, headers=headers),
            client.get("/api/admin/kiosks/bar-1/menu", headers=headers),
            client.delete("/api/admin/kiosks/bar-1/menu", headers=headers),
            client.get("/api/monitoring/kiosks", headers=headers),
        ]
        for answer in answers:
            assert answer.status_code == 401, answer.text
            assert answer.json()["error_code"] == "UNAUTHORIZED"
            assert answer.headers["www-authenticate"].startswith("Bearer")
    assert configs_issued(engine) == before


def test_a_menu_assigned_to_named_kiosks_issues_one_config_each(
    client: TestClient, kiosks: list[str], engine: Engine, ledger: Ledger
) -> None:
    before = latest_versions(engine)
    answer = put(client, {"menu": MENU, "kiosks": ["bar-2", "bar-1"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["menu_id"] == "summer-2026"
    assert body["versions"] == {
        "bar-1": before.get("bar-1", 0) + 1,
        "bar-2": before.get("bar-2", 0) + 1,
    }
    for kiosk_id in ("bar-1", "bar-2"):
        latest = ledger.latest_config(kiosk_id)
        assert latest is not None and latest.version == body["versions"][kiosk_id]
        assert not latest.published  # issued, unsent: the publisher's to send
        assert parse_menu(latest.document["menu"]) == parse_menu(MENU)
        assert latest.document["currency"] == "EUR"
    # The other kiosks got nothing.
    after = latest_versions(engine)
    assert {k: v for k, v in after.items() if k not in ("bar-1", "bar-2")} == {
        k: v for k, v in before.items() if k not in ("bar-1", "bar-2")
    }

    # Versions increase with every change, and GET shows the latest menu with its version.
    cheaper = copy.deepcopy(MENU)
    cheaper["items"][0]["unit_price_cents"] = 400
    second = put(client, {"menu": cheaper, "kiosks": ["bar-1"]})
    assert second.status_code == 200
    assert second.json()["versions"] == {"bar-1": body["versions"]["bar-1"] + 1}
    shown = client.get("/api/admin/kiosks/bar-1/menu", headers=admin_headers())
    assert shown.status_code == 200
    assert shown.json() == {
        "kiosk_id": "bar-1",
        "version": body["versions"]["bar-1"] + 1,
        "published": False,
        "menu": cheaper,
    }


def test_role_and_all_name_the_registered_kiosks_disabled_ones_too(
    client: TestClient, kiosks: list[str], engine: Engine
) -> None:
    before = latest_versions(engine)
    bars = put(client, {"menu": MENU, "role": "bar"})
    assert bars.status_code == 200, bars.text
    assert sorted(bars.json()["versions"]) == ["bar-1", "bar-2"]
    # "role": "all" is the kiosks registered with role `all` (DESIGN.md `menu set --role`) ...
    role_all = put(client, {"menu": MENU, "role": "all"})
    assert role_all.status_code == 200
    assert sorted(role_all.json()["versions"]) == ["gate-b"]
    # ... and "all": true every kiosk, the disabled gate-b included.
    everyone = put(client, {"menu": None, "all": True})
    assert everyone.status_code == 200
    assert everyone.json()["menu_id"] is None
    assert sorted(everyone.json()["versions"]) == sorted(kiosks)
    after = latest_versions(engine)
    expected_changes = {"bar-1": 2, "bar-2": 2, "checkpoint-1": 1, "gate-b": 2}
    assert {k: after[k] - before.get(k, 0) for k in kiosks} == expected_changes
    cleared = client.get("/api/admin/kiosks/bar-1/menu", headers=admin_headers()).json()
    assert cleared["menu"] is None and cleared["version"] == after["bar-1"]
    assert scalar(engine, "SELECT count(*) FROM kiosks WHERE menu IS NOT NULL") == 0


def test_an_unknown_kiosk_issues_nothing_to_anyone(
    client: TestClient, kiosks: list[str], engine: Engine
) -> None:
    before = configs_issued(engine)
    answer = put(client, {"menu": MENU, "kiosks": ["bar-1", "bar-9", "bar-2"]})
    assert answer.status_code == 404, answer.text
    assert answer.json()["error_code"] == "UNKNOWN_KIOSK"
    assert "bar-9" in answer.json()["error"]
    assert configs_issued(engine) == before
    assert scalar(engine, "SELECT count(*) FROM kiosks WHERE menu IS NOT NULL") == 0
    assert client.get("/api/admin/kiosks/bar-9/menu", headers=admin_headers()).status_code == 404
    gone = client.delete("/api/admin/kiosks/bar-9/menu", headers=admin_headers())
    assert gone.status_code == 404 and gone.json()["error_code"] == "UNKNOWN_KIOSK"
    assert configs_issued(engine) == before


def test_the_ledger_rolls_back_every_kiosk_when_one_is_unknown(
    api_ledger: Ledger, api_engine: Engine, kiosks: list[str], engine: Engine
) -> None:
    """The transaction itself is all or nothing (a kiosk could vanish between the API's check
    and the write only by a change to the database, but the ledger does not rely on that) -
    and the API's own least-privilege role may issue configs."""
    assert scalar(api_engine, "SELECT current_user") == "festival_api"
    before = configs_issued(engine)
    menu = parse_menu(MENU)
    assert api_ledger.issue_kiosk_configs(["bar-1", "bar-2", "nope"], menu=menu) is None
    assert configs_issued(engine) == before
    assert scalar(engine, "SELECT count(*) FROM kiosks WHERE menu IS NOT NULL") == 0
    versions = api_ledger.issue_kiosk_configs(["bar-1", "bar-2"], menu=menu)
    assert versions is not None and set(versions) == {"bar-1", "bar-2"}
    assert configs_issued(engine) == before + 2


def _with(path: str, value: object) -> dict[str, Any]:
    """MENU with one field replaced: path like "items.1.unit_price_cents" or "menu_id"."""
    menu = copy.deepcopy(MENU)
    target: Any = menu
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is _DROP:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return menu


_DROP = object()

TOO_MANY_ITEMS = [{"sku": f"s{i}", "name": "x", "unit_price_cents": 1} for i in range(201)]

BAD_MENUS = [
    # (what, the menu, the field the answer names, a word of the message)
    (
        "a float price",
        _with("items.1.unit_price_cents", 2.5),
        "menu.items[1].unit_price_cents",
        "integer",
    ),
    (
        "a price as text",
        _with("items.0.unit_price_cents", "4.50"),
        "menu.items[0].unit_price_cents",
        "integer",
    ),
    (
        "a price too high",
        _with("items.0.unit_price_cents", 100_001),
        "menu.items[0].unit_price_cents",
        "100000",
    ),
    (
        "a negative price",
        _with("items.2.unit_price_cents", -1),
        "menu.items[2].unit_price_cents",
        "0..100000",
    ),
    ("a duplicate sku", _with("items.1.sku", "beer"), "menu.items[1].sku", "unique"),
    ("an empty name", _with("items.0.name", ""), "menu.items[0].name", "1..64"),
    ("a control character", _with("items.0.name", "Be\ner"), "menu.items[0].name", "name"),
    (
        "a VAT rate over 100 %",
        _with("items.0.vat_rate_bp", 10_001),
        "menu.items[0].vat_rate_bp",
        "10000",
    ),
    (
        "a flag that is not a bool",
        _with("items.2.is_deposit", 1),
        "menu.items[2].is_deposit",
        "boolean",
    ),
    ("an empty category", _with("items.1.category", ""), "menu.items[1].category", "1..32"),
    ("an unknown field", _with("items.0.colour", "gold"), "menu.items[0]", "colour"),
    (
        "a missing price",
        _with("items.3.unit_price_cents", _DROP),
        "menu.items[3].unit_price_cents",
        "missing",
    ),
    ("no items", _with("items", []), "menu.items", "1..200"),
    ("too many items", _with("items", TOO_MANY_ITEMS), "menu.items", "1..200"),
    ("no menu id", _with("menu_id", _DROP), "menu.menu_id", "missing"),
    ("a menu that is text", "summer-2026", "menu", "object"),
]


@pytest.mark.parametrize(
    ("menu", "field", "word"),
    [case[1:] for case in BAD_MENUS],
    ids=[case[0] for case in BAD_MENUS],
)
def test_a_bad_menu_names_its_field_and_issues_nothing(
    client: TestClient, kiosks: list[str], engine: Engine, menu: object, field: str, word: str
) -> None:
    before = configs_issued(engine)
    answer = put(client, {"menu": menu, "role": "bar"})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error_code"] == "INVALID_REQUEST"
    assert body["field"] == field
    assert word in body["error"]
    assert body["request_id"]
    assert configs_issued(engine) == before


BAD_BODIES = [
    ("not an object", [], None, "object"),
    ("no menu", {"all": True}, "menu", "missing field menu"),
    ("an unknown field", {"menu": MENU, "all": True, "force": True}, "force", "force"),
    ("no target", {"menu": MENU}, None, "exactly one"),
    ("two targets", {"menu": MENU, "all": True, "role": "bar"}, None, "exactly one"),
    ("all false", {"menu": MENU, "all": False}, "all", "true"),
    ("an unknown role", {"menu": MENU, "role": "bars"}, "role", "bar, checkpoint, all"),
    ("an empty kiosk list", {"menu": MENU, "kiosks": []}, "kiosks", "1..1000"),
    (
        "a kiosk id that is not one",
        {"menu": MENU, "kiosks": ["bar-1", "Bar 2"]},
        "kiosks[1]",
        "kiosk id",
    ),
    ("a kiosk twice", {"menu": MENU, "kiosks": ["bar-1", "bar-1"]}, "kiosks", "twice"),
]


@pytest.mark.parametrize(
    ("body", "field", "word"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_a_bad_body_is_a_400_and_issues_nothing(
    client: TestClient, kiosks: list[str], engine: Engine, body: object, field: str, word: str
) -> None:
    before = configs_issued(engine)
    answer = put(client, body)
    assert answer.status_code == 400, answer.text
    assert answer.json().get("field") == field
    assert word in answer.json()["error"]
    assert configs_issued(engine) == before


def test_the_body_must_be_json(client: TestClient, kiosks: list[str], engine: Engine) -> None:
    before = configs_issued(engine)
    form = client.put(
        "/api/admin/menus",
        content=b"menu=x",
        headers={**admin_headers(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    broken = client.put(
        "/api/admin/menus",
        content=b'{"menu": ',
        headers={**admin_headers(), "Content-Type": "application/json"},
    )
    assert broken.status_code == 400 and broken.json()["error_code"] == "INVALID_REQUEST"
    assert configs_issued(engine) == before


def test_a_full_menu_fits_the_routes_own_body_limit(
    client: TestClient, kiosks: list[str], engine: Engine
) -> None:
    """200 items with 64-character non-ASCII names are more than the API's usual 64 KiB."""
    items = [
        {
            "sku": f"sku-{index:03d}",
            "name": "Ä" * 64,
            "unit_price_cents": index,
            "category": "ü" * 32,
        }
        for index in range(200)
    ]
    body = {"menu": {"menu_id": "big", "items": items}, "kiosks": ["bar-1"]}
    answer = put(client, body)
    assert answer.status_code == 200, answer.text
    shown = client.get("/api/admin/kiosks/bar-1/menu", headers=admin_headers()).json()
    assert (
        len(shown["menu"]["items"]) == 200
        and shown["menu"]["items"][199]["unit_price_cents"] == 199
    )


def test_delete_clears_one_kiosks_menu(
    client: TestClient, kiosks: list[str], engine: Engine
) -> None:
    assert put(client, {"menu": MENU, "role": "bar"}).status_code == 200
    before = latest_versions(engine)
    answer = client.delete("/api/admin/kiosks/bar-2/menu", headers=admin_headers())
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"menu_id": None, "versions": {"bar-2": before["bar-2"] + 1}}
    assert (
        client.get("/api/admin/kiosks/bar-2/menu", headers=admin_headers()).json()["menu"] is None
    )
    assert (
        client.get("/api/admin/kiosks/bar-1/menu", headers=admin_headers()).json()["menu"] == MENU
    )


def test_a_kiosk_never_configured_has_no_menu(client: TestClient, kiosks: list[str]) -> None:
    shown = client.get("/api/admin/kiosks/checkpoint-1/menu", headers=admin_headers())
    assert shown.status_code == 200
    body = shown.json()
    assert body["kiosk_id"] == "checkpoint-1" and body["menu"] is None
    bad = client.get("/api/admin/kiosks/Not%20A%20Kiosk/menu", headers=admin_headers())
    assert bad.status_code == 400


def test_monitoring_kiosks_shows_the_version_each_runs_and_the_latest_issued(
    client: TestClient, kiosks: list[str], engine: Engine, owner_engine: Engine, ledger: Ledger
) -> None:
    versions = put(client, {"menu": MENU, "role": "bar"}).json()["versions"]
    # bar-1 acknowledged by the broker and running it (as its requests cite it); bar-2 pending.
    ledger.mark_config_published("bar-1", versions["bar-1"])
    with owner_engine.begin() as connection:
        from sqlalchemy import text

        connection.execute(
            text("SELECT sp_note_kiosk_config_version('bar-1', :version)"),
            {"version": versions["bar-1"]},
        )
    answer = client.get("/api/monitoring/kiosks", headers=admin_headers())
    assert answer.status_code == 200
    by_id = {row["kiosk_id"]: row for row in answer.json()}
    assert sorted(by_id) == sorted(kiosks)
    bar_1, bar_2 = by_id["bar-1"], by_id["bar-2"]
    assert bar_1["config_version"] == versions["bar-1"]
    assert bar_1["config_version_at"].endswith("Z")
    assert bar_1["latest_config_version"] == versions["bar-1"]
    assert bar_1["latest_config_published"] is True
    assert bar_1["menu_id"] == "summer-2026"
    assert bar_2["config_version"] is None
    assert bar_2["latest_config_version"] == versions["bar-2"]
    assert bar_2["latest_config_published"] is False
    # What the ledger's overview says is kept, the checkpoint id included (not dropped).
    assert bar_1["role"] == "bar" and bar_1["enabled"] is True and "checkpoint_id" in bar_1
    assert by_id["gate-b"]["enabled"] is False
    assert by_id["checkpoint-1"]["menu_id"] is None
    # The dashboard's one call carries the same rows.
    dashboard = client.get("/api/monitoring/dashboard", headers=admin_headers()).json()
    assert {row["kiosk_id"]: row for row in dashboard["kiosks"]}["bar-1"] == bar_1
