"""(1.1) The kiosk shell and the cloud's config and deny-list: verified, kept, applied, loaded.

The shell with its real outbox and codec and the fake link (which replays retained messages on
every subscription, like the broker); driven synchronously (``process_pending``). The same
behaviours against a real `festival-kiosk run` and Mosquitto: test_kiosk_config_process.py.
"""

from __future__ import annotations

import json
import logging
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device.ids import UuidV7Generator
from device.indicators import IndicatorPlayer, RecordingPins
from device.kiosk import Command, Kiosk, KioskIdentity
from device.link import FakeLink
from device.machine import MachineConfig, Mode, OrderEntered, Reply
from device.menu import parse_menu, price_order
from device.outbox import Outbox
from device.reader import SimulatedReader
from device.recharge import parse_recharge
from device.settings import DEFAULT_MENU_FILE
from protocol.codec import authenticate
from protocol.keys import generate_private_key
from protocol.limits import CONFIG_BYTES_MAX
from protocol.models import OfflinePolicy
from tests.device.cloud_messages import (
    DENYLIST_TOPIC,
    config_message,
    denylist_message,
    kiosk_config_topic,
    repriced,
)
from tests.device.responder import FakeLedger

KIOSK_ID = "bar-1"
UID = "04A1B2C3D4E5F6"
BLOCKED = "0A0B0C0D"
RESULT_TOPIC = "festival/v1/kiosks/bar-1/result"
CONFIG_TOPIC = kiosk_config_topic(KIOSK_ID)


def machine_config(mode: Mode) -> MachineConfig:
    return MachineConfig(
        mode=mode,
        outbox_max=5,
        result_timeout_ms=5_000,
        resend_after_ms=10_000,
        resend_after_ms_max=60_000,
        outcome_display_ms=6_000,
    )


@dataclass
class Rig:
    kiosk: Kiosk
    link: FakeLink
    reader: SimulatedReader
    ledger: FakeLedger
    kiosk_key: Any
    outbox_path: Path
    mode: Mode

    def retain(self, topic: str, payload: bytes) -> None:
        self.link.retain(topic, payload)
        self.kiosk.process_pending()

    def state(self) -> dict[str, Any]:
        document = json.loads(self.kiosk.snapshot_json())
        assert isinstance(document, dict)
        return document

    def counters(self) -> dict[str, int]:
        return dict(self.kiosk.counters)

    def sell(self, document: dict[str, object]) -> dict[str, Any]:
        """Price ``document`` as the HTTP interface does, tap, and return the signed request."""
        sales = self.kiosk.sales_menu()
        assert sales.menu is not None
        draft = price_order(sales.menu, document, config_version=sales.config_version)
        self._enter(draft)
        return self._tap()

    def top_up(self, amount_cents: int) -> dict[str, Any]:
        draft = parse_recharge(
            {"amount_cents": amount_cents, "payment_method": "cash", "staff_id": "anna"},
            topup_cents_max=100_000,
            config_version=self.kiosk.sales_menu().config_version,
        )
        self._enter(draft)
        return self._tap()

    def _enter(self, draft: Any) -> None:
        reply: queue.Queue[Reply] = queue.Queue(maxsize=1)
        self.kiosk.handle(Command(OrderEntered(draft), reply))
        assert reply.get_nowait().ok

    def _tap(self) -> dict[str, Any]:
        self.reader.tap(UID)
        self.kiosk.process_pending()
        raw = self.link.requests()[-1]
        public = self.kiosk_key.public_key()
        return authenticate(raw, topic_kiosk_id=KIOSK_ID, public_key_for=lambda k: public).document


def make_rig(
    tmp_path: Path, ledger: FakeLedger, kiosk_key: Any, mode: Mode = Mode.BAR, *, connect: bool
) -> Rig:
    outbox_path = tmp_path / "state" / "outbox.sqlite3"
    link = FakeLink(responder=lambda raw: ledger.answer(KIOSK_ID, raw), result_topic=RESULT_TOPIC)
    reader = SimulatedReader()
    config = machine_config(mode)
    kiosk = Kiosk(
        identity=KioskIdentity(
            kiosk_id=KIOSK_ID,
            currency="EUR",
            private_key=kiosk_key,
            cloud_public_key=ledger.cloud_key.public_key(),
            firmware="test",
            topup_cents_max=100_000,
        ),
        config=config,
        outbox=Outbox(outbox_path, kiosk_id=KIOSK_ID, capacity=config.outbox_max),
        link=link,
        reader=reader,
        indicators=IndicatorPlayer(RecordingPins()),
        result_topic=RESULT_TOPIC,
        ids=UuidV7Generator(),
        fallback_menu=parse_menu(DEFAULT_MENU_FILE.read_bytes(), currency="EUR")
        if mode is Mode.BAR
        else None,
        config_topic=CONFIG_TOPIC,
        denylist_topic=DENYLIST_TOPIC,
    )
    kiosk.start()
    if connect:
        link.connect()
    kiosk.process_pending()
    return Rig(kiosk, link, reader, ledger, kiosk_key, outbox_path, mode)


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger(
        cloud_key=generate_private_key(), kiosk_keys={}, balances={UID: 50_000, BLOCKED: 50_000}
    )


@pytest.fixture
def kiosk_key(ledger: FakeLedger) -> Any:
    key = generate_private_key()
    ledger.kiosk_keys[KIOSK_ID] = key.public_key()
    return key


@pytest.fixture
def rig(tmp_path: Path, ledger: FakeLedger, kiosk_key: Any) -> Iterator[Rig]:
    made = make_rig(tmp_path, ledger, kiosk_key, connect=True)
    yield made
    made.kiosk.close()


def ignored_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.__dict__["context"]["reason"]
        for record in caplog.records
        if record.getMessage() in ("config ignored", "denylist ignored")
    ]


# --- the config --------------------------------------------------------------------------------


def test_without_a_config_the_kiosk_sells_from_its_menu_file_and_cites_nothing(rig: Rig) -> None:
    assert rig.kiosk.config_version is None and rig.kiosk.offline_policy is None
    sales = rig.kiosk.sales_menu()
    assert (sales.source, sales.config_version) == ("file", None)
    state = rig.state()
    assert state["config"] == {
        "version": None,
        "menu": "file",
        "menu_tag": sales.tag,
        "menu_id": None,
        "offline_allowed": False,
    }
    assert state["denylist"] == {"version": None, "cards": 0}
    request = rig.sell({"items": [{"sku": "beer", "quantity": 1}]})
    assert "config_version" not in request
    assert request["items"][0]["unit_price_cents"] == 550  # the file's price


def test_a_retained_config_is_applied_kept_and_sold_from(rig: Rig) -> None:
    raw = config_message(rig.ledger.cloud_key, version=3)
    rig.retain(CONFIG_TOPIC, raw)
    kiosk = rig.kiosk
    assert kiosk.config_version == 3
    assert kiosk.offline_policy == OfflinePolicy(2000, 5000, 50_000)
    sales = kiosk.sales_menu()
    assert (sales.source, sales.config_version) == ("config", 3)
    assert sales.menu is not None and sales.menu.title == "main-bar"
    kept = kiosk.outbox.cloud_message("config")
    assert kept is not None and (kept.version, kept.payload) == (3, raw)
    state = rig.state()
    assert state["config"] == {
        "version": 3,
        "menu": "config",
        "menu_tag": sales.tag,
        "menu_id": "main-bar",
        "offline_allowed": True,
    }
    assert rig.counters()["cloud_messages_applied"] == 1
    # The central menu's prices, flags and SKUs, exactly; the deposit is a line of its own.
    request = rig.sell(
        {
            "items": [{"sku": "beer", "quantity": 2}, {"sku": "cup", "quantity": 2}],
            "returns": [{"sku": "cup-return", "quantity": 1}],
        }
    )
    assert request["config_version"] == 3
    assert request["items"] == [
        {"name": "Beer 0.5 l", "quantity": 2, "unit_price_cents": 600, "sku": "beer"},
        {
            "name": "Cup deposit",
            "quantity": 2,
            "unit_price_cents": 200,
            "sku": "cup",
            "is_deposit": True,
        },
        {
            "name": "Cup return",
            "quantity": 1,
            "unit_price_cents": 200,
            "sku": "cup-return",
            "is_deposit": True,
            "is_return": True,
        },
    ]
    assert request["total_cents"] == 1200 + 400 - 200
    assert rig.state()["screen"] == "approved", str(rig.state()["outcome"])


def test_the_retained_copy_after_a_reconnect_is_ignored_quietly(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.retain(CONFIG_TOPIC, config_message(rig.ledger.cloud_key, version=2))
    rig.retain(DENYLIST_TOPIC, denylist_message(rig.ledger.cloud_key, 5, [BLOCKED]))
    applied = rig.counters()["cloud_messages_applied"]
    with caplog.at_level(logging.DEBUG, logger="device.kiosk"):
        for _ in range(3):
            rig.link.disconnect()
            rig.kiosk.process_pending()
            rig.link.connect()  # the subscription hands over both retained messages again
            rig.kiosk.process_pending()
    assert rig.counters()["cloud_messages_applied"] == applied == 2
    assert rig.counters()["cloud_messages_ignored"] == 0
    assert [r.levelname for r in caplog.records if "already applied" in r.getMessage()] == [
        "DEBUG"
    ] * 6
    quiet = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert set(quiet) == {"mqtt disconnected"}  # the link's own lines, nothing about the copies


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda cloud, other: config_message(other, version=9),
            "INVALID_SIGNATURE: signature does not verify",
        ),
        (
            lambda cloud, other: config_message(cloud, kiosk_id="bar-2", version=9),
            "INVALID_REQUEST: config is addressed to another kiosk",
        ),
        (
            lambda cloud, other: config_message(cloud, version=9, currency="CHF"),
            "INVALID_REQUEST: config currency CHF, this kiosk sells in EUR",
        ),
        (
            lambda cloud, other: b"x" * (CONFIG_BYTES_MAX + 1),
            "INVALID_REQUEST: message larger than 196608 bytes",
        ),
        (
            lambda cloud, other: denylist_message(cloud, 9, []),
            "INVALID_REQUEST: config type must be config, got 'denylist'",
        ),
        (lambda cloud, other: config_message(cloud, version=1), "version 1 is older than 4"),
    ],
    ids=["forged", "another-kiosk", "currency", "oversize", "not-a-config", "older"],
)
def test_a_config_that_must_not_apply_is_ignored_and_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture, make: Any, reason: str
) -> None:
    good = config_message(rig.ledger.cloud_key, version=4, items=repriced(700))
    rig.retain(CONFIG_TOPIC, good)
    before = rig.state()
    bad = make(rig.ledger.cloud_key, generate_private_key())
    with caplog.at_level(logging.INFO, logger="device.kiosk"):
        rig.link.deliver(bad, CONFIG_TOPIC)
        rig.kiosk.process_pending()
    assert ignored_reasons(caplog) == [reason]
    assert rig.counters()["cloud_messages_ignored"] == 1
    assert rig.kiosk.config_version == 4
    kept = rig.kiosk.outbox.cloud_message("config")
    assert kept is not None and kept.payload == good
    after = rig.state()
    assert after["config"] == before["config"]
    assert rig.sell({"items": [{"sku": "beer", "quantity": 1}]})["total_cents"] == 700


def test_the_same_version_with_other_content_is_ignored_and_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.retain(CONFIG_TOPIC, config_message(rig.ledger.cloud_key, version=4))
    with caplog.at_level(logging.INFO, logger="device.kiosk"):
        rig.link.deliver(
            config_message(rig.ledger.cloud_key, version=4, items=repriced(100)), CONFIG_TOPIC
        )
        rig.kiosk.process_pending()
    assert ignored_reasons(caplog) == ["same version as the one applied, different content"]
    assert rig.sell({"items": [{"sku": "beer", "quantity": 1}]})["total_cents"] == 600


def test_a_newer_config_replaces_the_menu_and_a_config_without_one_goes_back_to_the_file(
    rig: Rig,
) -> None:
    rig.retain(CONFIG_TOPIC, config_message(rig.ledger.cloud_key, version=1))
    first_tag = rig.state()["config"]["menu_tag"]
    rig.retain(CONFIG_TOPIC, config_message(rig.ledger.cloud_key, version=2, items=repriced(650)))
    assert rig.state()["config"]["menu_tag"] != first_tag
    assert rig.sell({"items": [{"sku": "beer", "quantity": 1}]})["total_cents"] == 650
    # `menu clear`: the config has no menu; the kiosk sells from its file again, citing v3.
    rig.retain(CONFIG_TOPIC, config_message(rig.ledger.cloud_key, version=3, items=None))
    sales = rig.kiosk.sales_menu()
    assert (sales.source, sales.config_version) == ("file", 3)
    request = rig.sell({"items": [{"sku": "beer", "quantity": 1}]})
    assert (request["config_version"], request["total_cents"]) == (3, 550 + 200)
    # An offline policy alone changes nothing on the menu: same tag, nothing to say.
    tag = rig.state()["config"]["menu_tag"]
    rig.retain(
        CONFIG_TOPIC, config_message(rig.ledger.cloud_key, version=4, items=None, offline=None)
    )
    assert rig.state()["config"]["menu_tag"] == tag
    assert rig.kiosk.offline_policy is None and rig.state()["config"]["offline_allowed"] is False


def test_an_order_waiting_for_its_band_keeps_its_prices_and_cites_its_config(rig: Rig) -> None:
    rig.retain(CONFIG_TOPIC, config_message(rig.ledger.cloud_key, version=1))
    sales = rig.kiosk.sales_menu()
    assert sales.menu is not None
    draft = price_order(sales.menu, {"items": [{"sku": "beer", "quantity": 1}]}, config_version=1)
    rig._enter(draft)
    rig.retain(CONFIG_TOPIC, config_message(rig.ledger.cloud_key, version=2, items=repriced(900)))
    state = rig.state()
    assert state["screen"] == "order_pending"
    assert state["message"].startswith("The menu changed: this order keeps the prices shown")
    assert state["order"]["total_cents"] == 600 and state["order"]["config_version"] == 1
    request = rig._tap()
    # Priced from version 1, it says so: the cloud checks it against version 1 (within the grace).
    assert (request["config_version"], request["total_cents"]) == (1, 600)


def test_the_kept_config_and_denylist_survive_a_restart_without_a_broker(
    tmp_path: Path, ledger: FakeLedger, kiosk_key: Any
) -> None:
    rig = make_rig(tmp_path, ledger, kiosk_key, connect=True)
    rig.retain(CONFIG_TOPIC, config_message(ledger.cloud_key, version=7, items=repriced(480)))
    rig.retain(DENYLIST_TOPIC, denylist_message(ledger.cloud_key, 3, [BLOCKED, "04B1B2C3"]))
    tag = rig.state()["config"]["menu_tag"]
    rig.kiosk.close()

    again = make_rig(tmp_path, ledger, kiosk_key, connect=False)  # no network after the reboot
    try:
        assert again.kiosk.config_version == 7 and again.kiosk.denylist_version == 3
        assert again.kiosk.is_denied(BLOCKED) and not again.kiosk.is_denied(UID)
        state = again.state()
        assert state["online"] is False
        assert (state["config"]["version"], state["config"]["menu_tag"]) == (7, tag)
        assert state["denylist"] == {"version": 3, "cards": 2}
        again.link.connect()
        request = again.sell({"items": [{"sku": "beer", "quantity": 1}]})
        assert (request["config_version"], request["total_cents"]) == (7, 480)
        # The broker hands the same retained messages over: nothing new, nothing ignored.
        assert again.counters()["cloud_messages_ignored"] == 0
    finally:
        again.kiosk.close()


def test_a_kept_config_the_pinned_key_no_longer_verifies_is_dropped_at_start(
    tmp_path: Path, ledger: FakeLedger, kiosk_key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(tmp_path, ledger, kiosk_key, connect=True)
    rig.retain(CONFIG_TOPIC, config_message(ledger.cloud_key, version=7))
    rig.kiosk.close()
    ledger.cloud_key = generate_private_key()  # the cloud's key was replaced (and re-pinned)
    with caplog.at_level(logging.WARNING, logger="device.kiosk"):
        again = make_rig(tmp_path, ledger, kiosk_key, connect=False)
    try:
        assert again.kiosk.config_version is None
        assert again.kiosk.sales_menu().source == "file"
        assert again.kiosk.outbox.cloud_message("config") is None
        assert [r.getMessage() for r in caplog.records] == [
            "kept config no longer verifies: dropped"
        ]
        # A config under the new key applies from version 1 again.
        again.link.connect()
        again.retain(CONFIG_TOPIC, config_message(ledger.cloud_key, version=1))
        assert again.kiosk.config_version == 1
    finally:
        again.kiosk.close()


def test_a_top_up_cites_the_config_the_checkpoint_runs(
    tmp_path: Path, ledger: FakeLedger, kiosk_key: Any
) -> None:
    rig = make_rig(tmp_path, ledger, kiosk_key, Mode.CHECKPOINT, connect=True)
    try:
        assert "config_version" not in rig.top_up(1000)
        rig.retain(CONFIG_TOPIC, config_message(ledger.cloud_key, version=5, items=None))
        assert rig.state()["config"]["menu"] == "none"
        assert rig.top_up(2000)["config_version"] == 5
    finally:
        rig.kiosk.close()


# --- the deny-list -------------------------------------------------------------------------------


def test_a_denylist_is_applied_kept_and_replaced_only_by_a_newer_one(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    key = rig.ledger.cloud_key
    rig.retain(DENYLIST_TOPIC, denylist_message(key, 2, [BLOCKED]))
    assert rig.kiosk.denylist_version == 2 and rig.kiosk.is_denied(BLOCKED)
    assert rig.state()["denylist"] == {"version": 2, "cards": 1}
    kept = rig.kiosk.outbox.cloud_message("denylist")
    assert kept is not None and kept.version == 2
    with caplog.at_level(logging.INFO, logger="device.kiosk"):
        rig.link.deliver(denylist_message(key, 1, [UID]), DENYLIST_TOPIC)
        rig.link.deliver(denylist_message(generate_private_key(), 9, [UID]), DENYLIST_TOPIC)
        rig.link.deliver(config_message(key, version=9), DENYLIST_TOPIC)
        rig.kiosk.process_pending()
    assert ignored_reasons(caplog) == [
        "version 1 is older than 2",
        "INVALID_SIGNATURE: signature does not verify",
        "INVALID_REQUEST: denylist type must be denylist, got 'config'",
    ]
    assert not rig.kiosk.is_denied(UID)
    rig.retain(DENYLIST_TOPIC, denylist_message(key, 3, [UID]))
    assert rig.kiosk.is_denied(UID) and not rig.kiosk.is_denied(BLOCKED)
    assert rig.state()["denylist"] == {"version": 3, "cards": 1}


def test_online_a_card_on_the_denylist_still_goes_to_the_cloud(rig: Rig) -> None:
    """Online the cloud decides (it declines a blocked card); the kiosk only keeps the list."""
    rig.retain(DENYLIST_TOPIC, denylist_message(rig.ledger.cloud_key, 1, [UID]))
    assert rig.kiosk.is_denied(UID)
    request = rig.sell({"items": [{"sku": "water", "quantity": 1}]})
    assert request["card_uid"] == UID
    assert rig.state()["screen"] == "approved"  # this stand-in cloud does not block it


# --- replays and rollbacks (docs/security.md "The config and deny-list channel") --------------


def _offline_tap(rig: Rig, card_uid: str) -> dict[str, Any]:
    """A beer entered and paid with ``card_uid`` while the link is down: the state after."""
    sales = rig.kiosk.sales_menu()
    assert sales.menu is not None
    draft = price_order(
        sales.menu, {"items": [{"sku": "beer", "quantity": 1}]}, config_version=sales.config_version
    )
    rig._enter(draft)
    rig.reader.tap(card_uid)
    rig.kiosk.process_pending()
    return rig.state()


def test_a_denylist_rollback_never_unblocks_a_card(
    tmp_path: Path, ledger: FakeLedger, kiosk_key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A genuine, cloud-signed deny-list from before the card was blocked, replayed live, left
    as the broker's retained copy while the kiosk is away (handed over twice on the return: the
    durable session's copy and the new subscription's), and found there after a reboot: each
    ignored as older, and the card is still refused offline."""
    key = ledger.cloud_key
    rig = make_rig(tmp_path, ledger, kiosk_key, connect=True)
    rig.retain(CONFIG_TOPIC, config_message(key, version=2))  # with an offline policy
    before_the_block = denylist_message(key, 4, [])
    rig.retain(DENYLIST_TOPIC, before_the_block)
    rig.retain(DENYLIST_TOPIC, denylist_message(key, 5, [BLOCKED]))
    assert rig.kiosk.is_denied(BLOCKED)
    with caplog.at_level(logging.INFO, logger="device.kiosk"):
        rig.link.deliver(before_the_block, DENYLIST_TOPIC)
        rig.kiosk.process_pending()
        rig.link.disconnect()
        rig.kiosk.process_pending()
        rig.retain(DENYLIST_TOPIC, before_the_block)
        rig.link.connect()
        rig.kiosk.process_pending()
    assert ignored_reasons(caplog) == ["version 4 is older than 5"] * 3
    assert rig.kiosk.is_denied(BLOCKED) and rig.kiosk.denylist_version == 5
    kept = rig.kiosk.outbox.cloud_message("denylist")
    assert kept is not None and kept.version == 5
    rig.link.disconnect()
    rig.kiosk.process_pending()
    state = _offline_tap(rig, BLOCKED)
    assert (state["screen"], state["notice"]) == ("order_pending", "card blocked")
    assert rig.kiosk.outbox.outstanding() == []
    rig.kiosk.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="device.kiosk"):
        again = make_rig(tmp_path, ledger, kiosk_key, connect=False)  # a reboot
        again.link.retain(DENYLIST_TOPIC, before_the_block)  # what the broker holds
        again.link.connect()
        again.kiosk.process_pending()
    try:
        assert ignored_reasons(caplog) == ["version 4 is older than 5"]
        assert again.kiosk.is_denied(BLOCKED) and again.state()["denylist"]["version"] == 5
    finally:
        again.kiosk.close()


def test_an_older_config_replayed_after_a_reconnect_changes_no_price(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker's retained config rolled back while the kiosk was away (a restored broker, or
    an old signed message republished): both copies the return hands over are ignored."""
    old = config_message(rig.ledger.cloud_key, version=3, items=repriced(300))
    rig.retain(CONFIG_TOPIC, old)
    rig.retain(CONFIG_TOPIC, config_message(rig.ledger.cloud_key, version=4, items=repriced(700)))
    with caplog.at_level(logging.INFO, logger="device.kiosk"):
        rig.link.disconnect()
        rig.kiosk.process_pending()
        rig.retain(CONFIG_TOPIC, old)
        rig.link.connect()
        rig.kiosk.process_pending()
    assert ignored_reasons(caplog) == ["version 3 is older than 4"] * 2
    assert rig.kiosk.config_version == 4
    assert rig.sell({"items": [{"sku": "beer", "quantity": 1}]})["total_cents"] == 700


def test_an_oversize_denylist_is_ignored_and_logged(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.retain(DENYLIST_TOPIC, denylist_message(rig.ledger.cloud_key, 2, [BLOCKED]))
    with caplog.at_level(logging.INFO, logger="device.kiosk"):
        rig.link.deliver(b"x" * (CONFIG_BYTES_MAX + 1), DENYLIST_TOPIC)
        rig.kiosk.process_pending()
    assert ignored_reasons(caplog) == [
        f"INVALID_REQUEST: message larger than {CONFIG_BYTES_MAX} bytes"
    ]
    assert rig.kiosk.is_denied(BLOCKED) and rig.kiosk.denylist_version == 2
