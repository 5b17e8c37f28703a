"""The bar's menu and the pricing of an order: pure, no I/O.

The bartender's page sends only SKUs and quantities; the kiosk computes every price, deposit and
cup return from the menu it sells from, so a page (or anyone on the loopback interface) cannot
choose a price. The result is a ``BarDraft``: protocol ``BarItem`` lines and their total in cents.

A kiosk sells from the menu of its latest config (PROTOCOL.md 1.1, "Menus"); the local menu file
is the fallback while no config with a menu was applied. ``SalesMenu`` is which one, with the
version of the config the kiosk runs (written into every request as ``config_version``) and a
``tag`` naming the menu's content, which the page sends back with an order so that an order
priced on screen from one menu is never charged from another.

Menu file (JSON, prices in the deployment's currency, integer cents)::

    {"currency": "EUR", "title": "Main bar",
     "products": [{"sku": "beer", "name": "Beer 0.5 l", "unit_price_cents": 550,
                   "deposit_sku": "cup"}],
     "deposits": [{"sku": "cup", "name": "Cup deposit", "return_name": "Cup return",
                   "unit_price_cents": 200}]}
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from device.limits import (
    MENU_DEPOSITS_MAX,
    MENU_PRODUCTS_MAX,
    MENU_TAG_LENGTH,
    MENU_TITLE_LENGTH_MAX,
)
from device.machine import BarDraft
from protocol.errors import ProtocolError
from protocol.limits import (
    ITEM_NAME_LENGTH_MAX,
    ITEM_QUANTITY_MAX,
    ITEM_QUANTITY_MIN,
    ITEMS_MAX,
    RETURN_CENTS_MAX_DEFAULT,
    SKU_LENGTH_MAX,
    SKU_LENGTH_MIN,
    STAFF_ID_LENGTH_MAX,
    TEXT_FORBIDDEN_PATTERN,
    UNIT_PRICE_CENTS_MAX,
    UNIT_PRICE_CENTS_MIN,
)
from protocol.models import BarItem
from protocol.models import Menu as ConfigMenu
from protocol.strict_json import loads_strict

MenuSource: TypeAlias = Literal["config", "file", "none"]

SKU_PATTERN: Final = re.compile(rf"\A[A-Za-z0-9._-]{{1,{SKU_LENGTH_MAX}}}\Z")


class MenuError(ValueError):
    """The menu file is not a valid menu (a configuration error: the kiosk does not start)."""


class OrderError(ValueError):
    """An order from the page cannot be priced (unknown SKU, bad quantity, too many lines)."""


@dataclass(frozen=True, slots=True)
class Product:
    """What the bartender can sell. ``deposit_sku`` (menu files): one unit of that deposit is
    added per unit sold. ``is_deposit`` (config menus): this line is itself a deposit."""

    sku: str
    name: str
    unit_price_cents: int
    deposit_sku: str | None = None
    is_deposit: bool = False


@dataclass(frozen=True, slots=True)
class Deposit:
    """What can be brought back and credited (a cup). ``return_is_deposit``: the return line
    also carries ``is_deposit`` (a config menu's return item that says so)."""

    sku: str
    name: str
    return_name: str
    unit_price_cents: int
    return_is_deposit: bool = False


@dataclass(frozen=True, slots=True)
class Menu:
    currency: str
    title: str
    products: tuple[Product, ...]
    deposits: tuple[Deposit, ...]

    def product(self, sku: str) -> Product | None:
        return next((product for product in self.products if product.sku == sku), None)

    def deposit(self, sku: str) -> Deposit | None:
        return next((deposit for deposit in self.deposits if deposit.sku == sku), None)

    def to_dict(self) -> dict[str, object]:
        """The menu as the page reads it (GET /api/menu)."""
        return {
            "currency": self.currency,
            "title": self.title,
            "products": [
                {
                    "sku": product.sku,
                    "name": product.name,
                    "unit_price_cents": product.unit_price_cents,
                    "deposit_sku": product.deposit_sku,
                    "is_deposit": product.is_deposit,
                }
                for product in self.products
            ],
            "deposits": [
                {
                    "sku": deposit.sku,
                    "name": deposit.name,
                    "return_name": deposit.return_name,
                    "unit_price_cents": deposit.unit_price_cents,
                }
                for deposit in self.deposits
            ],
        }

    @property
    def tag(self) -> str:
        """Names this menu's content: equal tags, equal prices (whatever the config version)."""
        content = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(content.encode("utf-8")).hexdigest()[:MENU_TAG_LENGTH]


# Not slots: ``tag`` is computed once (functools.cached_property needs a __dict__); the page's
# snapshot names it on every refresh.
@dataclass(frozen=True)
class SalesMenu:
    """What a kiosk sells from now: ``menu`` (None at a checkpoint without one), ``source``
    (``config``: the menu of its latest config; ``file``: the local menu file; ``none``) and the
    version of the config it runs (None: it never received one)."""

    menu: Menu | None
    source: MenuSource
    config_version: int | None

    @functools.cached_property
    def tag(self) -> str | None:
        return None if self.menu is None else self.menu.tag


# --- a config's menu ---------------------------------------------------------------------------


def menu_from_config(menu: ConfigMenu, *, currency: str) -> Menu:
    """The menu a kiosk sells from, made from its config's menu (PROTOCOL.md 1.1 "Menus").

    A config's menu is flat: every item is sold as it is, with exactly its price and flags, since
    the cloud checks each line against it. Items without flags, and deposit items (``is_deposit``
    without ``is_return``), are products the bartender taps: a deposit is a line of its own (the
    config says nothing of which product takes which deposit, so the kiosk adds none by itself,
    unlike a menu file's ``deposit_sku``). Return items (``is_return``) are what the page offers as
    returns, credited, their line carrying the item's ``is_deposit`` too. Docs: docs/protocol.md.
    """
    products = tuple(
        Product(item.sku, item.name, item.unit_price_cents, is_deposit=item.is_deposit)
        for item in menu.items
        if not item.is_return
    )
    returns = tuple(
        Deposit(
            item.sku,
            item.name,
            item.name,
            item.unit_price_cents,
            return_is_deposit=item.is_deposit,
        )
        for item in menu.items
        if item.is_return
    )
    return Menu(currency=currency, title=menu.menu_id, products=products, deposits=returns)


# --- menu file ---------------------------------------------------------------------------------


def parse_menu(data: bytes, *, currency: str) -> Menu:
    """Parse and check a menu file's bytes; raise MenuError naming the first problem."""
    try:
        document = loads_strict(data)
    except ProtocolError as error:
        raise MenuError(f"menu is not strict JSON: {error.message}") from None
    if not isinstance(document, dict):
        raise MenuError("menu must be a JSON object")
    _only_keys(document, {"currency", "title", "products", "deposits"}, "menu", MenuError)
    if document.get("currency") != currency:
        raise MenuError(f"menu currency must be {currency}, got {document.get('currency')!r}")
    title = _menu_text(document.get("title", "Bar"), "title", MENU_TITLE_LENGTH_MAX)
    deposits = tuple(
        _deposit(entry, index)
        for index, entry in enumerate(_list(document.get("deposits", []), "deposits"))
    )
    products = tuple(
        _product(entry, index)
        for index, entry in enumerate(_list(document.get("products"), "products"))
    )
    if not 1 <= len(products) <= MENU_PRODUCTS_MAX:
        raise MenuError(f"menu must have 1..{MENU_PRODUCTS_MAX} products")
    if len(deposits) > MENU_DEPOSITS_MAX:
        raise MenuError(f"menu may have at most {MENU_DEPOSITS_MAX} deposits")
    skus = [entry.sku for entry in products] + [entry.sku for entry in deposits]
    duplicates = sorted({sku for sku in skus if skus.count(sku) > 1})
    if duplicates:
        raise MenuError(f"duplicate sku {duplicates[0]!r} in menu")
    deposit_skus = {deposit.sku for deposit in deposits}
    for product in products:
        if product.deposit_sku is not None and product.deposit_sku not in deposit_skus:
            raise MenuError(
                f"product {product.sku!r} names unknown deposit {product.deposit_sku!r}"
            )
    return Menu(currency=currency, title=title, products=products, deposits=deposits)


def _list(value: object, name: str) -> list[object]:
    if not isinstance(value, list):
        raise MenuError(f"menu {name} must be an array")
    return value


def _only_keys(
    document: Mapping[str, object], allowed: set[str], where: str, error: type[ValueError]
) -> None:
    unknown = sorted(set(document) - allowed)
    if unknown:
        raise error(f"unknown field {unknown[0]!r} in {where}")


def _menu_text(value: object, name: str, length_max: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= length_max:
        raise MenuError(f"menu {name} must be a string of 1..{length_max} characters")
    if TEXT_FORBIDDEN_PATTERN.search(value):
        raise MenuError(f"menu {name} contains a control character")
    return value


def _menu_sku(value: object, where: str) -> str:
    if not isinstance(value, str) or not SKU_PATTERN.match(value):
        raise MenuError(f"{where}.sku must be 1..{SKU_LENGTH_MAX} characters of [A-Za-z0-9._-]")
    return value


def _menu_price(value: object, where: str) -> int:
    if type(value) is not int or not UNIT_PRICE_CENTS_MIN <= value <= UNIT_PRICE_CENTS_MAX:
        raise MenuError(
            f"{where}.unit_price_cents must be an integer {UNIT_PRICE_CENTS_MIN}.."
            f"{UNIT_PRICE_CENTS_MAX} (cents)"
        )
    return value


def _product(value: object, index: int) -> Product:
    where = f"products[{index}]"
    if not isinstance(value, dict):
        raise MenuError(f"{where} must be an object")
    _only_keys(value, {"sku", "name", "unit_price_cents", "deposit_sku"}, where, MenuError)
    deposit_sku = value.get("deposit_sku")
    return Product(
        sku=_menu_sku(value.get("sku"), where),
        name=_menu_text(value.get("name"), f"{where}.name", ITEM_NAME_LENGTH_MAX),
        unit_price_cents=_menu_price(value.get("unit_price_cents"), where),
        deposit_sku=None if deposit_sku is None else _menu_sku(deposit_sku, f"{where}.deposit"),
    )


def _deposit(value: object, index: int) -> Deposit:
    where = f"deposits[{index}]"
    if not isinstance(value, dict):
        raise MenuError(f"{where} must be an object")
    _only_keys(value, {"sku", "name", "return_name", "unit_price_cents"}, where, MenuError)
    return Deposit(
        sku=_menu_sku(value.get("sku"), where),
        name=_menu_text(value.get("name"), f"{where}.name", ITEM_NAME_LENGTH_MAX),
        return_name=_menu_text(
            value.get("return_name"), f"{where}.return_name", ITEM_NAME_LENGTH_MAX
        ),
        unit_price_cents=_menu_price(value.get("unit_price_cents"), where),
    )


# --- pricing an order --------------------------------------------------------------------------


def price_order(
    menu: Menu,
    document: object,
    *,
    return_cents_max: int = RETURN_CENTS_MAX_DEFAULT,
    config_version: int | None = None,
) -> BarDraft:
    """Price the page's order ``{"items": [{"sku", "quantity"}], "returns": [...], "staff_id"}``.

    ``items`` are products; each product with a deposit adds a deposit line per deposit SKU;
    ``returns`` are deposit SKUs brought back (cups), credited, at most ``return_cents_max`` in
    one order (the cloud's FESTIVAL_RETURN_MAX_CENTS rule, refused here before signing). Raises
    OrderError. ``config_version``: the config whose menu ``menu`` is (the draft cites it).
    """
    if not isinstance(document, dict):
        raise OrderError("order must be a JSON object")
    _only_keys(document, {"items", "returns", "staff_id"}, "order", OrderError)
    products = _quantities(document.get("items", []), "items")
    returns = _quantities(document.get("returns", []), "returns")
    if not products and not returns:
        raise OrderError("order is empty")
    lines: list[BarItem] = []
    deposit_quantities: dict[str, int] = {}
    for sku, quantity in products.items():
        product = menu.product(sku)
        if product is None:
            raise OrderError(f"unknown product sku {sku!r}")
        lines.append(
            BarItem(
                product.name,
                quantity,
                product.unit_price_cents,
                sku=product.sku,
                is_deposit=product.is_deposit,
            )
        )
        if product.deposit_sku is not None:
            deposit_quantities[product.deposit_sku] = (
                deposit_quantities.get(product.deposit_sku, 0) + quantity
            )
    for sku, quantity in deposit_quantities.items():
        deposit = menu.deposit(sku)
        assert deposit is not None, "parse_menu checked every deposit_sku"
        lines.append(
            BarItem(
                deposit.name,
                _line_quantity(quantity, deposit.name),
                deposit.unit_price_cents,
                sku=deposit.sku,
                is_deposit=True,
            )
        )
    for sku, quantity in returns.items():
        deposit = menu.deposit(sku)
        if deposit is None:
            raise OrderError(f"unknown deposit sku {sku!r} in returns")
        lines.append(
            BarItem(
                deposit.return_name,
                quantity,
                deposit.unit_price_cents,
                sku=deposit.sku,
                is_deposit=deposit.return_is_deposit,
                is_return=True,
            )
        )
    if len(lines) > ITEMS_MAX:
        raise OrderError(f"an order has at most {ITEMS_MAX} lines")
    returns_cents = sum(line.quantity * line.unit_price_cents for line in lines if line.is_return)
    if returns_cents > return_cents_max:
        raise OrderError(
            f"returns of one order may credit at most {_euros(return_cents_max)}"
            f" {menu.currency}; this order returns {_euros(returns_cents)} {menu.currency}"
        )
    staff_id = document.get("staff_id")
    if staff_id is not None and (
        not isinstance(staff_id, str)
        or not 1 <= len(staff_id) <= STAFF_ID_LENGTH_MAX
        or TEXT_FORBIDDEN_PATTERN.search(staff_id)
    ):
        raise OrderError(f"staff_id must be 1..{STAFF_ID_LENGTH_MAX} printable characters")
    total_cents = sum(line.signed_cents for line in lines)
    return BarDraft(
        items=tuple(lines),
        total_cents=total_cents,
        staff_id=staff_id,
        config_version=config_version,
    )


def _quantities(value: object, name: str) -> dict[str, int]:
    """``[{"sku", "quantity"}]`` as {sku: quantity}, lines of one SKU added up, in order."""
    if not isinstance(value, list):
        raise OrderError(f"{name} must be an array")
    if len(value) > ITEMS_MAX:
        raise OrderError(f"{name} may hold at most {ITEMS_MAX} lines")
    quantities: dict[str, int] = {}
    for index, entry in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(entry, dict):
            raise OrderError(f"{where} must be an object")
        _only_keys(entry, {"sku", "quantity"}, where, OrderError)
        sku = entry.get("sku")
        quantity = entry.get("quantity")
        # Any SKU a menu can hold (a config's are 1..32 printable characters); the lookup in the
        # menu then decides.
        if (
            not isinstance(sku, str)
            or not SKU_LENGTH_MIN <= len(sku) <= SKU_LENGTH_MAX
            or TEXT_FORBIDDEN_PATTERN.search(sku)
        ):
            raise OrderError(f"{where}.sku is not a valid sku")
        if type(quantity) is not int or not ITEM_QUANTITY_MIN <= quantity <= ITEM_QUANTITY_MAX:
            raise OrderError(
                f"{where}.quantity must be an integer {ITEM_QUANTITY_MIN}..{ITEM_QUANTITY_MAX}"
            )
        quantities[sku] = _line_quantity(quantities.get(sku, 0) + quantity, sku)
    return quantities


def _euros(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _line_quantity(quantity: int, what: str) -> int:
    if quantity > ITEM_QUANTITY_MAX:
        raise OrderError(f"at most {ITEM_QUANTITY_MAX} of {what!r} in one order")
    return quantity
