"""(1.1) Genuine wristbands through the real `festival-cloud consumer` in sun mode
(FESTIVAL_CARD_AUTH=sun): signed requests carrying SUN messages over Mosquitto, verified by the
consumer, counters decided in PostgreSQL (revision 0014), signed results (PROTOCOL.md "Genuine
wristbands"). Two consumers on one shared subscription never both accept one counter."""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cloud.consumer.worker import LOSS_APPROVED_PREFIX
from cloud.database import make_engine
from cloud.keys import generate_card_master_key, save_card_master_key
from cloud.ledger import Ledger
from cloud.ledger_fake import OFFLINE_LOSS_MESSAGE, SUN_MESSAGES
from cloud.sandbox import MosquittoBroker
from cloud.wristbands import program_wristband
from device.virtual_ntag424 import VirtualNtag424
from protocol.errors import ErrorCode, Status
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import (
    BarOrder,
    CardSun,
    CardSwap,
    CheckpointRecharge,
    OfflinePolicy,
    Result,
    Void,
)
from protocol.ntag424 import read_ndef_url
from protocol.sun import CardKeyDerivation, sun_from_url, sun_message
from tests.consumer.conftest import CloudKey, LedgerDatabase
from tests.consumer.kiosk_client import KioskClient, now_ms, uuid7
from tests.consumer.support import ConsumerProcess
from tests.waiting import wait_until

ROLES = {"sun-bar": "bar", "sun-top": "checkpoint"}
NOT_GENUINE = "wristband not genuine"
_uids = itertools.count(0x04_00_00_00_00_10_00)


class Band:
    """A genuine wristband of this deployment: its UID and read counter (what the chip does)."""

    def __init__(self, derivation: CardKeyDerivation) -> None:
        self.uid = f"{next(_uids):014X}"
        self._derivation = derivation
        self.counter = 1  # programming's read-back

    def tap(self) -> CardSun:
        self.counter += 1
        return self.sun_at(self.counter)

    def sun_at(self, counter: int) -> CardSun:
        message = sun_message(
            self._derivation.meta_key,
            self._derivation.file_key(self.uid),
            bytes.fromhex(self.uid),
            counter,
        )
        return CardSun(message.picc_data, message.cmac)


@dataclass
class Sun:
    ledger: Ledger
    kiosks: dict[str, KioskClient]
    consumers: list[ConsumerProcess]
    derivation: CardKeyDerivation
    master_key: bytes

    def band(self, funded_cents: int = 0) -> Band:
        band = Band(self.derivation)
        if funded_cents:
            result = self.top_up(band.uid, funded_cents, band.tap())
            assert result.status is Status.APPROVED, result.message
        return band

    def top_up(self, card_uid: str, amount_cents: int, card_sun: CardSun | None) -> Result:
        top = self.kiosks["sun-top"]
        request: CheckpointRecharge = replace(
            top.recharge(card_uid, amount_cents), card_sun=card_sun
        )
        top.send(request)
        return top.wait_result(request.request_id)

    def order(self, card_uid: str, total_cents: int, card_sun: CardSun | None) -> BarOrder:
        return replace(self.kiosks["sun-bar"].bar_order(card_uid, total_cents), card_sun=card_sun)

    def buy(self, card_uid: str, total_cents: int, card_sun: CardSun | None) -> Result:
        bar = self.kiosks["sun-bar"]
        order = self.order(card_uid, total_cents, card_sun)
        bar.send(order)
        return bar.wait_result(order.request_id)

    def offline_version(self) -> int:
        """A config of sun-bar that allows offline sales, issued and published; its version."""
        version = self.ledger.issue_kiosk_config(
            "sun-bar",
            offline=OfflinePolicy(
                sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000
            ),
        )
        assert version is not None
        self.ledger.mark_config_published("sun-bar", version)
        return version

    def sell_offline(
        self, card_uid: str, total_cents: int, card_sun: CardSun | None, version: int
    ) -> Result:
        bar = self.kiosks["sun-bar"]
        order = replace(
            self.order(card_uid, total_cents, card_sun), offline=True, config_version=version
        )
        bar.send(order)
        return bar.wait_result(order.request_id)

    def balance(self, card_uid: str) -> int:
        card = self.ledger.card(card_uid)
        assert card is not None
        return card.balance_cents

    def sun_failures(self) -> dict[str, float]:
        """festival_consumer_sun_failures_total by reason, summed over the consumers."""
        counts: dict[str, float] = {}
        for consumer in self.consumers:
            url = f"http://127.0.0.1:{consumer.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith("festival_consumer_sun_failures_total{"):
                        reason = line.split('reason="', 1)[1].split('"', 1)[0]
                        counts[reason] = counts.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
        return counts


@pytest.fixture(scope="module")
def sun(
    ledger_database: LedgerDatabase,
    cloud_key: CloudKey,
    mosquitto_broker: MosquittoBroker,
    service_dirs: Callable[[str], Path],
) -> Iterator[Sun]:
    for kiosk_id in ROLES:
        if kiosk_id not in mosquitto_broker.users:
            mosquitto_broker.add_user(kiosk_id)
    workdir = service_dirs("consumer-sun")
    master_key = generate_card_master_key()
    key_file = workdir / "card-master.key"
    save_card_master_key(master_key, key_file)
    engine = make_engine(ledger_database.owner_url, pool_size=2)
    ledger = Ledger(engine)
    keys = {kiosk_id: generate_private_key() for kiosk_id in ROLES}
    for kiosk_id, role in ROLES.items():
        ledger.add_kiosk(kiosk_id, public_key_b64(keys[kiosk_id]), role)
    consumers = [
        ConsumerProcess(
            database_url=ledger_database.service_url,
            mqtt_url=mosquitto_broker.url("cloud-consumer"),
            signing_key_file=cloud_key.path,
            consumer_id=f"consumer-sun-{n}-{uuid7()[-8:]}",
            workdir=workdir,
            extra_env={"FESTIVAL_CARD_AUTH": "sun", "CARD_MASTER_KEY_FILE": str(key_file)},
        )
        for n in range(2)
    ]
    kiosks: dict[str, KioskClient] = {}
    try:
        for consumer in consumers:
            consumer.start()
        for kiosk_id, key in keys.items():
            kiosks[kiosk_id] = KioskClient(
                mosquitto_broker.url(kiosk_id), kiosk_id, key, cloud_key.private_key.public_key()
            ).connect()
        yield Sun(ledger, kiosks, consumers, CardKeyDerivation(master_key), master_key)
    finally:
        for client in kiosks.values():
            client.close()
        for consumer in consumers:
            consumer.close()
        engine.dispose()


def _not_genuine(result: Result, detail: str) -> None:
    assert (result.status, result.error_code) == (Status.DECLINED, ErrorCode.CARD_NOT_GENUINE)
    assert result.message == f"Wristband not genuine: see the info desk ({detail})"


def test_a_genuine_band_tops_up_and_pays(sun: Sun) -> None:
    band = sun.band(funded_cents=2_000)
    result = sun.buy(band.uid, 450, band.tap())
    assert result.status is Status.APPROVED, result.message
    assert result.new_balance_cents == 1_550


def test_the_same_uid_on_a_uid_only_card_is_not_genuine(sun: Sun) -> None:
    band = sun.band(funded_cents=2_000)
    result = sun.buy(band.uid, 450, None)  # a magic card answering the band's UID
    _not_genuine(result, "no SUN message")
    assert (result.previous_balance_cents, result.new_balance_cents) == (2_000, 2_000)
    _not_genuine(sun.top_up(band.uid, 1_000, None), "no SUN message")
    assert sun.balance(band.uid) == 2_000


def test_a_replayed_sun_message_is_not_genuine_online(sun: Sun) -> None:
    band = sun.band(funded_cents=2_000)
    captured = band.tap()
    assert sun.buy(band.uid, 100, captured).status is Status.APPROVED
    _not_genuine(sun.buy(band.uid, 100, captured), "SUN message already used")
    older = band.sun_at(band.counter - 1)  # a message sniffed before the last tap
    _not_genuine(sun.buy(band.uid, 100, older), "SUN message already used")
    assert sun.buy(band.uid, 100, band.tap()).status is Status.APPROVED, "the band still works"
    assert sun.balance(band.uid) == 1_800


def test_card_a_s_message_with_card_b_s_uid_is_not_genuine(sun: Sun) -> None:
    a, b = sun.band(funded_cents=1_000), sun.band(funded_cents=1_000)
    _not_genuine(sun.buy(b.uid, 100, a.tap()), "SUN message of another wristband")
    assert sun.balance(b.uid) == 1_000


def test_one_flipped_mac_bit_is_declined(sun: Sun) -> None:
    band = sun.band(funded_cents=1_000)
    genuine = band.tap()
    flipped = f"{int(genuine.cmac, 16) ^ 1:016X}"
    _not_genuine(
        sun.buy(band.uid, 100, replace(genuine, cmac=flipped)), "SUN message does not verify"
    )
    assert sun.buy(band.uid, 100, genuine).status is Status.APPROVED, "the real one still counts"


def test_a_foreign_band_and_a_short_uid_are_not_genuine(sun: Sun) -> None:
    foreign = Band(CardKeyDerivation(bytes(16)))  # programmed by another deployment
    _not_genuine(sun.top_up(foreign.uid, 500, foreign.tap()), "not a wristband of this festival")
    band = sun.band()
    _not_genuine(sun.top_up("04A1B2C3", 500, band.tap()), "malformed SUN message")


def test_two_consumers_never_both_accept_one_counter(sun: Sun) -> None:
    """Each SUN message is sent in two requests at once; the shared subscription spreads them
    over both consumers. Exactly one of each pair is approved."""
    bar = sun.kiosks["sun-bar"]
    band = sun.band(funded_cents=10_000)
    pairs = []
    for _ in range(10):
        card_sun = band.tap()
        pair = [sun.order(band.uid, 10, card_sun) for _ in range(2)]
        for order in pair:
            bar.send(order, wait=False)
        pairs.append(pair)
    for pair in pairs:
        statuses = sorted(str(bar.wait_result(order.request_id).status) for order in pair)
        assert statuses == ["approved", "declined"], statuses
    assert sun.balance(band.uid) == 10_000 - 10 * 10


def test_an_offline_sale_with_a_failing_sun_is_approved_on_the_loss_account(sun: Sun) -> None:
    """(Revision 0021) The kiosk already handed the drink over: the result says approved, with
    the card's balances untouched (an unknown card: 0, 0, debt 0, and no card is created)."""
    bar = sun.kiosks["sun-bar"]
    version = sun.ledger.issue_kiosk_config(
        "sun-bar",
        offline=OfflinePolicy(sale_max_cents=2_000, card_max_cents=5_000, kiosk_max_cents=10_000),
    )
    assert version is not None
    sun.ledger.mark_config_published("sun-bar", version)
    band = sun.band(funded_cents=3_000)
    captured = band.tap()
    assert sun.buy(band.uid, 500, captured).status is Status.APPROVED
    unknown = Band(sun.derivation)
    for card_uid, card_sun, held in (
        (band.uid, captured, 2_500),  # a replayed message: stale
        (band.uid, None, 2_500),  # a UID-only copy
        (unknown.uid, None, 0),
    ):
        order = replace(sun.order(card_uid, 700, card_sun), offline=True, config_version=version)
        bar.send(order)
        result = bar.wait_result(order.request_id)
        assert result.status is Status.APPROVED, result.message
        assert (result.previous_balance_cents, result.new_balance_cents, result.debt_cents) == (
            held,
            held,
            0,
        )
        assert str(result.message).startswith("Paid (offline sale) by the festival's loss account")
    assert sun.balance(band.uid) == 2_500
    assert sun.ledger.card(unknown.uid) is None
    assert sun.ledger.check() == []


def test_failures_are_counted_by_reason(sun: Sun) -> None:
    before = sun.sun_failures()
    band = sun.band(funded_cents=1_000)
    captured = band.tap()
    assert sun.buy(band.uid, 100, captured).status is Status.APPROVED
    _not_genuine(sun.buy(band.uid, 100, captured), "SUN message already used")
    _not_genuine(sun.buy(band.uid, 100, None), "no SUN message")

    def grew() -> bool:
        now = sun.sun_failures()
        return all(now.get(r, 0) >= before.get(r, 0) + 1 for r in ("stale_counter", "missing"))

    wait_until(grew, timeout_s=10, what="the consumers' sun failure counters")
    recent = {row["reason"] for row in sun.ledger.sun_failures(minutes=5)}
    assert {"stale_counter", "missing"} <= recent


def _ledger_failures(sun: Sun) -> dict[str, int]:
    """sun_failure_minutes of the last few minutes, summed by reason."""
    counts: dict[str, int] = {}
    for row in sun.ledger.sun_failures(minutes=5):
        reason = str(row["reason"])
        counts[reason] = counts.get(reason, 0) + int(row["failures"])  # type: ignore[call-overload]
    return counts


def test_an_offline_sale_on_the_loss_account_is_counted_by_its_reason(sun: Sun) -> None:
    """(Revision 0021) An offline sale whose verified message was accepted before is approved
    on the loss account, not declined: the consumer's metric counts it as stale_counter all the
    same, as the ledger's sun_failure_minutes does (so is one without a message, as missing)."""
    version = sun.offline_version()
    band = sun.band(funded_cents=1_000)
    captured = band.tap()
    assert sun.buy(band.uid, 100, captured).status is Status.APPROVED
    metric_before, ledger_before = sun.sun_failures(), _ledger_failures(sun)
    stale = sun.sell_offline(band.uid, 100, captured, version)
    assert stale.status is Status.APPROVED, stale.message
    assert stale.message == OFFLINE_LOSS_MESSAGE.format(sun=SUN_MESSAGES["stale_counter"])
    assert stale.message.startswith(LOSS_APPROVED_PREFIX)
    missing = sun.sell_offline(band.uid, 100, None, version)
    assert missing.message == OFFLINE_LOSS_MESSAGE.format(sun=SUN_MESSAGES["missing"])
    assert sun.balance(band.uid) == 900  # the loss account paid both

    def grew(before: Mapping[str, float], now: Mapping[str, float]) -> bool:
        return all(now.get(r, 0) >= before.get(r, 0) + 1 for r in ("stale_counter", "missing"))

    wait_until(
        lambda: grew(metric_before, sun.sun_failures()), timeout_s=10, what="the consumers' counts"
    )
    assert grew(ledger_before, _ledger_failures(sun))  # written with the outcomes


def test_sun_mode_a_swap_needs_the_new_band_genuine_and_an_active_old_one_presented(
    sun: Sun,
) -> None:
    """(1.1) card_swap in sun mode: the new band's card_sun like any request's; an active old
    band only with its verified old_card_sun; a void needs no SUN message (no band is read)."""
    old, new = sun.band(funded_cents=900), sun.band()
    top = sun.kiosks["sun-top"]

    def swap(card_sun: CardSun | None, old_card_sun: CardSun | None) -> Result:
        request = CardSwap(
            request_id=uuid7(),
            kiosk_id=top.kiosk_id,
            seq=top.next_seq(),
            created_at_ms=now_ms(),
            card_uid=new.uid,
            currency=top.currency,
            old_card_uid=old.uid,
            staff_id="staff-1",
            old_card_sun=old_card_sun,
            card_sun=card_sun,
        )
        top.send(request)
        return top.wait_result(request.request_id)

    _not_genuine(swap(None, old.tap()), "no SUN message")
    absent = swap(new.tap(), None)
    assert (absent.error_code, absent.message) == (
        ErrorCode.CARD_BLOCKED,
        "Old wristband not presented: block it as lost first",
    )
    presented = swap(new.tap(), old.tap())
    assert (presented.status, presented.new_balance_cents) == (Status.APPROVED, 900)

    order = sun.order(new.uid, 400, new.tap())
    bar = sun.kiosks["sun-bar"]
    bar.send(order)
    assert bar.wait_result(order.request_id).approved
    void = Void(
        request_id=uuid7(),
        kiosk_id=bar.kiosk_id,
        seq=bar.next_seq(),
        created_at_ms=now_ms(),
        card_uid=new.uid,
        currency=bar.currency,
        original_request_id=order.request_id,
        staff_id="staff-1",
    )
    bar.send(void)
    assert bar.wait_result(void.request_id).new_balance_cents == 900


def test_a_virtual_tag_s_captured_message_pays_once_offline_then_the_loss_account(
    sun: Sun,
) -> None:
    """Issue 15 §6 "accepted once offline", with a real tag's message: a virtual NTAG 424 DNA
    programmed as `card program` does, tapped like a kiosk reads it; one captured SUN message
    sold offline twice (the offline rule: not accepted before). The first sale is paid by the
    card, the second by the festival's loss account; the card pays once."""
    tag = VirtualNtag424(bytes.fromhex("04F0E1D2C3B4A5"))
    done = program_wristband(tag.answer, sun.master_key, "https://pay.festival.example")
    uid = done.uid

    def tap() -> CardSun:
        tag.reset()  # a new tap: the band enters the field again
        message = sun_from_url(read_ndef_url(tag.answer))
        assert message is not None
        return CardSun(message.picc_data, message.cmac)

    version = sun.offline_version()
    assert sun.top_up(uid, 1_000, tap()).status is Status.APPROVED
    captured = tap()
    first = sun.sell_offline(uid, 300, captured, version)
    assert (first.status, first.message) == (Status.APPROVED, "Paid (offline sale)")
    assert (first.previous_balance_cents, first.new_balance_cents) == (1_000, 700)
    second = sun.sell_offline(uid, 300, captured, version)
    assert second.status is Status.APPROVED, second.message
    assert second.message == OFFLINE_LOSS_MESSAGE.format(sun=SUN_MESSAGES["stale_counter"])
    assert (second.previous_balance_cents, second.new_balance_cents) == (700, 700)
    _not_genuine(sun.buy(uid, 300, captured), "SUN message already used")  # online: never
    assert sun.buy(uid, 300, tap()).status is Status.APPROVED, "the band itself still pays"
    assert sun.balance(uid) == 400
    assert sun.ledger.check() == []
