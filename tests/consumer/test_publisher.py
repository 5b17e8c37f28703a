"""cloud/publisher.py against an in-memory ConfigLedger and link: a version is marked published
only after the broker's PUBACK, a failure leaves it for the next flush, a document that cannot
be encoded is skipped (and counted) without blocking the others, the deny-list is recomputed
only when cards changed. The real ledger, broker and kiosks: tests/consumer/
test_config_publishing.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cloud.consumer.metrics import ConsumerMetrics
from cloud.ledger_records import IssuedConfig, IssuedDenyList
from cloud.menu_admin import MenuFileError, read_menu_file
from cloud.publisher import Publisher
from protocol.codec import verify_config, verify_denylist
from protocol.keys import generate_private_key
from protocol.limits import CONFIG_BYTES_MAX

KEY = generate_private_key()


class DatabaseAway(Exception):
    pass


def document(kiosk_id: str, version: int, **changes: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "config",
        "kiosk_id": kiosk_id,
        "version": version,
        "issued_at_ms": 1_780_000_000_000 + version,
        "currency": "EUR",
        "menu": {
            "menu_id": "main",
            "items": [{"sku": "beer", "name": "Beer", "unit_price_cents": 600}],
        },
        "offline": None,
        **changes,
    }


@dataclass
class Ledger:
    """The ConfigLedger calls the publisher makes, in memory."""

    configs: list[IssuedConfig] = field(default_factory=list)
    denylist: IssuedDenyList | None = None
    stale: bool = False
    issued_denylists: int = 0
    away: bool = False

    def unpublished_configs(self, limit: int = 100) -> list[IssuedConfig]:
        if self.away:
            raise DatabaseAway("connection refused")
        return [config for config in self.configs if not config.published][:limit]

    def mark_config_published(self, kiosk_id: str, version: int) -> None:
        self.configs = [
            IssuedConfig(c.kiosk_id, c.version, c.document, True)
            if (c.kiosk_id, c.version) == (kiosk_id, version)
            else c
            for c in self.configs
        ]

    def denylist_stale(self) -> bool:
        return self.stale

    def issue_denylist(self) -> int | None:
        self.stale = False
        self.issued_denylists += 1
        version = (self.denylist.version if self.denylist else 0) + 1
        self.denylist = IssuedDenyList(version, 1_780_000_000_000, ("04A1B2C3D4E5F6",), False)
        return version

    def unpublished_denylist(self) -> IssuedDenyList | None:
        return self.denylist if self.denylist and not self.denylist.published else None

    def mark_denylist_published(self, version: int) -> None:
        assert self.denylist is not None and self.denylist.version == version
        self.denylist = IssuedDenyList(
            version, self.denylist.issued_at_ms, self.denylist.card_uids, True
        )


@dataclass
class Link:
    refuse: str | None = None
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    def publish_retained(self, topic: str, payload: bytes, timeout_s: float) -> str | None:
        if self.refuse is not None:
            return self.refuse
        self.sent.append((topic, payload))
        return None


def publisher(ledger: Ledger, link: Link, metrics: ConsumerMetrics | None = None) -> Publisher:
    return Publisher(
        ledger,  # type: ignore[arg-type]  # the subset of ConfigLedger flush() calls
        link,
        KEY,
        "festival",
        transient_errors=(DatabaseAway,),
        metrics=metrics,
    )


def sample(metrics: ConsumerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_configs_are_signed_sent_retained_and_marked_only_after_the_puback() -> None:
    ledger = Ledger(configs=[IssuedConfig("bar-1", 3, document("bar-1", 3), False)])
    link = Link(refuse="no PUBACK within 5.0 s")
    metrics = ConsumerMetrics.create()
    sender = publisher(ledger, link, metrics)

    report = sender.flush()
    assert (report.published, report.failures, report.pending) == (0, 1, 1)
    assert not ledger.configs[0].published
    assert sample(metrics, "festival_consumer_cloud_message_publish_failures_total", kind="config")
    link.refuse = None
    report = sender.flush()
    assert report.configs_published == [("bar-1", 3)] and report.pending == 0
    assert ledger.configs[0].published
    [(topic, payload)] = link.sent
    assert topic == "festival/v1/kiosks/bar-1/config"
    config = verify_config(payload, cloud_public_key=KEY.public_key(), kiosk_id="bar-1")
    assert config.version == 3 and config.menu is not None
    assert config.menu.items[0].unit_price_cents == 600
    assert sample(metrics, "festival_consumer_cloud_messages_published_total", kind="config") == 1
    assert sender.flush().published == 0  # nothing left: nothing sent again
    assert len(link.sent) == 1


def test_a_config_that_cannot_be_encoded_is_skipped_once_and_does_not_block_others() -> None:
    huge = document("bar-1", 2, menu=None)
    huge["menu"] = {
        "menu_id": "huge",
        "items": [
            {"sku": f"s{index}", "name": "N" * 64, "unit_price_cents": index}
            for index in range(200)
        ],
    }
    # The largest menu the protocol allows (200 items, 64-character names) fits well under
    # CONFIG_BYTES_MAX, so a config cannot really be oversize; what cannot be encoded either way
    # (ProtocolError from parse_config or encode_config) takes the same path: here a stored
    # document that no longer parses (an unknown currency).
    broken = document("bar-2", 5, currency="euro")
    ledger = Ledger(
        configs=[
            IssuedConfig("bar-1", 2, huge, False),
            IssuedConfig("bar-2", 5, broken, False),
            IssuedConfig("bar-3", 1, document("bar-3", 1), False),
        ]
    )
    link = Link()
    metrics = ConsumerMetrics.create()
    sender = publisher(ledger, link, metrics)
    report = sender.flush()
    assert sorted(report.configs_published) == [("bar-1", 2), ("bar-3", 1)]
    assert report.skipped == 1
    assert len(link.sent[0][1]) < CONFIG_BYTES_MAX
    assert sample(metrics, "festival_consumer_cloud_messages_unencodable_total", kind="config") == 1
    again = sender.flush()
    assert again.skipped == 1 and again.published == 0  # not retried, not counted twice
    assert sample(metrics, "festival_consumer_cloud_messages_unencodable_total", kind="config") == 1


def test_the_denylist_is_recomputed_only_when_cards_changed_and_sent_once() -> None:
    ledger = Ledger()
    link = Link()
    sender = publisher(ledger, link)
    assert sender.flush().denylist_published is None and ledger.issued_denylists == 0
    ledger.stale = True
    report = sender.flush()
    assert report.denylist_published == 1 and ledger.issued_denylists == 1
    [(topic, payload)] = link.sent
    assert topic == "festival/v1/denylist"
    denylist = verify_denylist(payload, cloud_public_key=KEY.public_key())
    assert (denylist.version, denylist.card_uids) == (1, ("04A1B2C3D4E5F6",))
    assert sender.flush().published == 0


def test_a_database_fault_is_reported_never_raised() -> None:
    ledger = Ledger(configs=[IssuedConfig("bar-1", 1, document("bar-1", 1), False)], away=True)
    report = publisher(ledger, Link()).flush()
    assert report.database_error == "connection refused" and report.published == 0
    ledger.away = False
    assert publisher(ledger, Link()).flush().configs_published == [("bar-1", 1)]


# --- `menu set FILE.json`: the line and the field -------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            '{\n  "menu_id": "main",\n  "items": [\n    {"sku": "beer", "name": "Beer",'
            ' "unit_price_cents": 600},\n    {"sku": "water", "name": "Water",\n'
            '     "unit_price_cents": -5}\n  ]\n}\n',
            6,
            "menu.items[1].unit_price_cents must be 0..100000, got -5",
        ),
        (
            '{"menu_id": "m",\n "items": [{"sku": "a", "name": "A", "unit_price_cents": 1,\n'
            ' "price": 2}]}',
            3,
            "unknown field 'price' in menu.items[0]",
        ),
        (
            '{"menu_id": "m", "items": [\n{"sku": "a", "name": "A", "unit_price_cents": 1},\n'
            '{"sku": "a", "name": "B", "unit_price_cents": 2}]}',
            3,
            "menu.items[1].sku 'a' is not unique in the menu",
        ),
        ('{"menu_id": "m",\n"menu_id": "n"}', 2, "duplicate field 'menu_id'"),
        ('{"menu_id": "m",\n "items": [1,]}', 2, "not JSON: Expecting value"),
        ('{"menu_id": "m"\n "items": []}', 2, "expected ',' or '}'"),
        ('{"menu_id": "m", "items": [\n{"sku": "a"}\n{"sku": "b"}]}', 3, "expected ',' or ']'"),
        ('{"menu_id": "m", "items": [{"sku": "a"},\n {}, []]\n', 3, "expected ',' or '}'"),
        ('{"menu_id": "m",\n "items": []}', 2, "menu.items must hold 1..200 items, got 0"),
        ("\n\n[]", 3, "menu must be a JSON object, got array"),
    ],
)
def test_a_bad_menu_file_names_its_line_and_field(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "menu.json"
    path.write_text(text)
    with pytest.raises(MenuFileError) as raised:
        read_menu_file(path)
    assert (raised.value.line, raised.value.message) == (line, message)


def test_a_good_menu_file_is_the_configs_menu(tmp_path: Path) -> None:
    path = tmp_path / "menu.json"
    path.write_text(
        '{"menu_id": "main", "items": [{"sku": "cup", "name": "Cup", "unit_price_cents": 200,'
        ' "is_deposit": true, "vat_rate_bp": 1900, "category": "deposit"}]}'
    )
    menu = read_menu_file(path)
    assert menu.menu_id == "main"
    assert (menu.items[0].is_deposit, menu.items[0].vat_rate_bp) == (True, 1900)
