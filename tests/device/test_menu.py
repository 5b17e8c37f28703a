"""Menu files and order pricing: the kiosk, not the page, decides every price."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import device
from device.menu import MenuError, OrderError, parse_menu, price_order
from protocol.models import BarItem

DEFAULT_MENU = Path(device.__file__).parent / "menus" / "default.json"


def menu_bytes(**changes: object) -> bytes:
    document: dict[str, object] = {
        "currency": "EUR",
        "title": "Test bar",
        "products": [
            {"sku": "beer", "name": "Beer", "unit_price_cents": 550, "deposit_sku": "cup"},
            {"sku": "shot", "name": "Shot", "unit_price_cents": 350},
        ],
        "deposits": [
            {
                "sku": "cup",
                "name": "Cup deposit",
                "return_name": "Cup return",
                "unit_price_cents": 200,
            }
        ],
    }
    document.update(changes)
    return json.dumps(document).encode()


def test_default_menu_is_valid() -> None:
    menu = parse_menu(DEFAULT_MENU.read_bytes(), currency="EUR")
    assert menu.product("beer") is not None
    assert menu.deposit("cup") is not None


def test_order_with_deposits_and_returns() -> None:
    menu = parse_menu(menu_bytes(), currency="EUR")
    draft = price_order(
        menu,
        {
            "items": [{"sku": "beer", "quantity": 2}, {"sku": "shot", "quantity": 1}],
            "returns": [{"sku": "cup", "quantity": 3}],
            "staff_id": "anna",
        },
    )
    assert draft.items == (
        BarItem("Beer", 2, 550, sku="beer"),
        BarItem("Shot", 1, 350, sku="shot"),
        BarItem("Cup deposit", 2, 200, sku="cup", is_deposit=True),
        BarItem("Cup return", 3, 200, sku="cup", is_return=True),
    )
    assert draft.total_cents == 1100 + 350 + 400 - 600
    assert draft.staff_id == "anna"


def test_returns_only_is_a_credit() -> None:
    menu = parse_menu(menu_bytes(), currency="EUR")
    draft = price_order(menu, {"returns": [{"sku": "cup", "quantity": 2}]})
    assert draft.total_cents == -400


def test_same_sku_twice_is_added_up() -> None:
    menu = parse_menu(menu_bytes(), currency="EUR")
    draft = price_order(menu, {"items": [{"sku": "shot", "quantity": 1}] * 3})
    assert draft.items == (BarItem("Shot", 3, 350, sku="shot"),)


@pytest.mark.parametrize(
    ("order", "problem"),
    [
        ({}, "empty"),
        ({"items": [{"sku": "gin", "quantity": 1}]}, "unknown product"),
        ({"items": [{"sku": "beer", "quantity": 0}]}, "quantity"),
        ({"items": [{"sku": "beer", "quantity": 1.0}]}, "quantity"),
        ({"items": [{"sku": "beer", "quantity": True}]}, "quantity"),
        (
            {"items": [{"sku": "beer", "quantity": 60}, {"sku": "beer", "quantity": 60}]},
            "at most 99",
        ),
        ({"items": [{"sku": "beer", "quantity": 1, "unit_price_cents": 1}]}, "unknown field"),
        ({"items": [{"sku": "beer", "quantity": 1}], "total_cents": 1}, "unknown field"),
        ({"returns": [{"sku": "beer", "quantity": 1}]}, "unknown deposit"),
        ({"items": [{"sku": "beer", "quantity": 1}], "staff_id": ""}, "staff_id"),
        ({"items": "beer"}, "array"),
        ([], "object"),
    ],
)
def test_bad_orders_are_refused(order: object, problem: str) -> None:
    menu = parse_menu(menu_bytes(), currency="EUR")
    with pytest.raises(OrderError, match=problem):
        price_order(menu, order)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"currency": "USD"}, "currency"),
        ({"products": []}, "1..100 products"),
        ({"products": [{"sku": "x", "name": "X", "unit_price_cents": 1.5}]}, "unit_price_cents"),
        ({"products": [{"sku": "x", "name": "X", "unit_price_cents": -1}]}, "unit_price_cents"),
        (
            {
                "products": [
                    {"sku": "x", "name": "X", "unit_price_cents": 1, "deposit_sku": "glass"}
                ]
            },
            "unknown deposit",
        ),
        ({"products": [{"sku": "cup", "name": "X", "unit_price_cents": 1}]}, "duplicate sku"),
        ({"products": [{"sku": "x", "name": "X\n", "unit_price_cents": 1}]}, "control"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_bad_menus_are_refused(changes: dict[str, object], problem: str) -> None:
    with pytest.raises(MenuError, match=problem):
        parse_menu(menu_bytes(**changes), currency="EUR")


def test_menu_with_duplicate_json_keys_is_refused() -> None:
    with pytest.raises(MenuError, match="strict JSON"):
        parse_menu(b'{"currency": "EUR", "currency": "EUR"}', currency="EUR")


def test_returns_of_one_order_are_capped_before_anything_is_signed() -> None:
    """Issue 11 item 1: 99 cups returned for +198.00 per tap. The kiosk refuses early (the cloud
    enforces the real rule, RETURN_LIMIT_EXCEEDED)."""
    menu = parse_menu(menu_bytes(), currency="EUR")
    at_the_cap = price_order(menu, {"returns": [{"sku": "cup", "quantity": 10}]})
    assert at_the_cap.total_cents == -2000  # the default cap: 2000 cents
    for returns in ([{"sku": "cup", "quantity": 11}], [{"sku": "cup", "quantity": 99}]):
        with pytest.raises(OrderError, match=r"at most 20\.00 EUR; this order returns"):
            price_order(menu, {"items": [{"sku": "beer", "quantity": 1}], "returns": returns})
    # Lines of one SKU are added up before the cap; deposits charged do not raise it.
    with pytest.raises(OrderError, match=r"returns 22\.00 EUR"):
        price_order(
            menu,
            {
                "items": [{"sku": "beer", "quantity": 20}],
                "returns": [{"sku": "cup", "quantity": 6}, {"sku": "cup", "quantity": 5}],
            },
        )
    assert (
        price_order(
            menu, {"returns": [{"sku": "cup", "quantity": 3}]}, return_cents_max=600
        ).total_cents
        == -600
    )
    with pytest.raises(OrderError, match=r"at most 0\.00 EUR"):
        price_order(menu, {"returns": [{"sku": "cup", "quantity": 1}]}, return_cents_max=0)


def test_a_config_menu_is_sold_as_it_is() -> None:
    """(1.1) A config's menu is flat: deposits are products of their own (no automatic deposit
    line), return items are the returns; every line carries exactly the item's price and flags."""
    from device.menu import SalesMenu, menu_from_config
    from protocol.models import Menu as ConfigMenu
    from protocol.models import MenuItem

    config_menu = ConfigMenu(
        "main bar",
        (
            MenuItem("Pils 0,5", "Pils 0,5 l", 480, vat_rate_bp=1900, category="beer"),
            MenuItem("cup", "Cup deposit", 200, is_deposit=True),
            MenuItem("cup back", "Cup return", 200, is_deposit=True, is_return=True),
            MenuItem("token back", "Token return", 100, is_return=True),
        ),
    )
    menu = menu_from_config(config_menu, currency="EUR")
    assert menu.title == "main bar"
    assert [(p.sku, p.is_deposit, p.deposit_sku) for p in menu.products] == [
        ("Pils 0,5", False, None),
        ("cup", True, None),
    ]
    assert [d.sku for d in menu.deposits] == ["cup back", "token back"]
    draft = price_order(
        menu,
        {
            "items": [{"sku": "Pils 0,5", "quantity": 2}, {"sku": "cup", "quantity": 2}],
            "returns": [{"sku": "cup back", "quantity": 1}, {"sku": "token back", "quantity": 1}],
        },
        config_version=4,
    )
    assert draft.items == (
        BarItem("Pils 0,5 l", 2, 480, sku="Pils 0,5"),
        BarItem("Cup deposit", 2, 200, sku="cup", is_deposit=True),
        BarItem("Cup return", 1, 200, sku="cup back", is_deposit=True, is_return=True),
        BarItem("Token return", 1, 100, sku="token back", is_return=True),
    )
    assert draft.total_cents == 960 + 400 - 200 - 100
    assert draft.config_version == 4
    with pytest.raises(OrderError, match="unknown product sku 'beer'"):
        price_order(menu, {"items": [{"sku": "beer", "quantity": 1}]})
    # The tag names the content: another price, another tag; the same content, the same tag.
    same = menu_from_config(config_menu, currency="EUR")
    assert same.tag == menu.tag and len(menu.tag) == 16
    cheaper = ConfigMenu("main bar", (MenuItem("Pils 0,5", "Pils 0,5 l", 450),))
    assert menu_from_config(cheaper, currency="EUR").tag != menu.tag
    assert SalesMenu(menu, "config", 4).tag == menu.tag
    assert SalesMenu(None, "none", None).tag is None
