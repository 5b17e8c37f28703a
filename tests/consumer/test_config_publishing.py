"""(1.1) Configs and deny-lists from the operator to a running kiosk, all real: PostgreSQL, the
Mosquitto configuration `festival-cloud broker config` generates (cloud/sandbox.py), the
`festival-cloud` console script (kiosk add, menu set|clear|show, offline set|disable, card
block|unblock), the `festival-cloud consumer` process and its publishing loop, and a
`festival-kiosk run` process with the simulated reader.

The CLI stores each config before it publishes it (and publishes it itself when it can); the
consumer publishes whatever any process stored and is unsent, at once on the database's NOTIFY
and at least every second; the deny-list follows every card change within PROTOCOL.md's 5 s.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud.database import make_engine, service_url
from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker
from device.keys import save_private_key
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import Menu, MenuItem
from tests.consumer.conftest import CloudKey
from tests.consumer.support import ConsumerProcess, festival_cloud
from tests.device.kiosk_process import KioskProcess
from tests.ledger.helpers import recharge
from tests.waiting import wait_until

CLOUD_USER = "cloud-consumer"
CARD = "04A1B2C3D4E5F6"
# A config or deny-list reaches a running kiosk this soon after it was published or issued
# (the loop flushes on NOTIFY; the brief's "within a second or two"), and the deny-list within
# PROTOCOL.md's 5 seconds of a card change.
CONFIG_ARRIVAL_S = 2.5
DENYLIST_ARRIVAL_S = 5.0
RECONNECT_TIMEOUT_S = 45.0  # paho's reconnect delay doubles while the broker is away
_consumer_numbers = itertools.count(1)

MENU: dict[str, Any] = {
    "menu_id": "central-bar",
    "items": [
        {"sku": "beer", "name": "Beer 0.5 l", "unit_price_cents": 550, "vat_rate_bp": 1900},
        {"sku": "water", "name": "Water", "unit_price_cents": 250},
        {"sku": "cup", "name": "Cup deposit", "unit_price_cents": 200, "is_deposit": True},
        {"sku": "cup-return", "name": "Cup back", "unit_price_cents": 200, "is_return": True},
    ],
}


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    """A broker of this test alone, with the cloud's user only: kiosks come from `kiosk add`."""
    root = Path(tempfile.mkdtemp(prefix="festival-publish-broker-"))
    broker = MosquittoBroker(root, prefix="festival")
    broker.add_user(CLOUD_USER, role="cloud")
    broker.start()
    yield broker
    broker.stop()


@dataclass
class Festival:
    database_url: str
    broker: MosquittoBroker
    cloud_key: CloudKey
    folder: Path
    make_kiosk_process: Callable[[str, str], KioskProcess]

    def cli(self, *args: str, check: bool = True, mqtt: bool = True) -> Any:
        extra = {"MQTT_ADMIN_FILE": str(self.broker.admin_file)}
        if mqtt:
            extra |= {
                "MQTT_URL": self.broker.url(CLOUD_USER),
                "CLOUD_SIGNING_KEY_FILE": str(self.cloud_key.path),
            }
        return festival_cloud(*args, database_url=self.database_url, check=check, **extra)

    def add_kiosk(self, kiosk_id: str, role: str = "bar") -> tuple[KioskProcess, Any]:
        """`kiosk add --json` (credentials on stdout, the config's publishing on stderr), and
        the kiosk's process (not started) with those credentials."""
        key_file = self.folder / f"{kiosk_id}.pem"
        key = generate_private_key()
        save_private_key(key, key_file)
        added = self.cli(
            "kiosk", "add", kiosk_id, "--public-key", public_key_b64(key), "--role", role, "--json"
        )
        password = json.loads(added.stdout)["mqtt_password"]
        url = f"mqtt://{kiosk_id}:{password}@127.0.0.1:{self.broker.port}"
        return self.make_kiosk_process(kiosk_id, url), added

    def ledger(self) -> Ledger:
        return Ledger(make_engine(self.database_url, pool_size=1))

    def consumer(self) -> ConsumerProcess:
        consumer = ConsumerProcess(
            database_url=service_url(self.database_url),
            mqtt_url=self.broker.url(CLOUD_USER),
            signing_key_file=self.cloud_key.path,
            consumer_id=f"consumer-publish-{next(_consumer_numbers)}",
            workdir=self.folder / "consumers",
        )
        self._consumers.append(consumer)
        return consumer

    def __post_init__(self) -> None:
        self._consumers: list[ConsumerProcess] = []

    def close(self) -> None:
        for consumer in self._consumers:
            consumer.close(purge=self.broker.process is not None)


@pytest.fixture
def festival(
    database_url: str, broker: MosquittoBroker, cloud_key: CloudKey, tmp_path: Path
) -> Iterator[Festival]:
    kiosks: list[KioskProcess] = []

    def make_kiosk_process(kiosk_id: str, mqtt_url: str) -> KioskProcess:
        kiosk = KioskProcess(
            env={
                "KIOSK_ID": kiosk_id,
                "KIOSK_KEY_FILE": str(tmp_path / f"{kiosk_id}.pem"),
                "CLOUD_PUBLIC_KEY": public_key_b64(cloud_key.private_key),
                "MQTT_URL": mqtt_url,
                "KIOSK_STATE_DIR": str(tmp_path / f"state-{kiosk_id}"),
                "KIOSK_MODE": "bar",
                "KIOSK_READER": "sim",
                "KIOSK_GPIO": "fake",
                "KIOSK_RESULT_TIMEOUT_S": "3",
            },
            log_file=tmp_path / f"{kiosk_id}.log",
        )
        kiosks.append(kiosk)
        return kiosk

    festival = Festival(database_url, broker, cloud_key, tmp_path, make_kiosk_process)
    yield festival
    for kiosk in kiosks:
        kiosk.stop()
    festival.close()


def write_menu(folder: Path, menu: object, name: str = "menu.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(menu, indent=2) + "\n")
    return path


def prices(kiosk: KioskProcess) -> dict[str, int]:
    status, menu = kiosk.get("/api/menu")
    assert status == 200, menu
    return {p["sku"]: p["unit_price_cents"] for p in menu["products"] + menu["deposits"]}


def configs(festival: Festival, kiosk_id: str) -> list[tuple[int, bool]]:
    from tests.ledger.helpers import execute

    return [
        (int(row[0]), bool(row[1]))
        for row in execute(
            festival.database_url,
            "SELECT version, published_at IS NOT NULL FROM kiosk_configs"
            " WHERE kiosk_id = :kiosk_id ORDER BY version",
            kiosk_id=kiosk_id,
        )
    ]


def test_kiosk_add_publishes_v1_and_menu_set_reaches_the_running_kiosk(
    festival: Festival,
) -> None:
    kiosk, added = festival.add_kiosk("bar-1")
    assert "config v1 published to bar-1" in added.stderr, added.stderr
    assert json.loads(added.stdout)["kiosk_id"] == "bar-1"  # stdout stays one JSON object
    kiosk.start()
    state = kiosk.wait_for(
        lambda s: s["online"] and s["config"]["version"] == 1, "config version 1"
    )
    # Version 1: no menu (the local file still prices), the default offline policy (2000 > 0).
    assert state["config"]["menu"] == "file" and state["config"]["offline_allowed"] is True

    menu_file = write_menu(festival.folder, MENU)
    done = festival.cli("menu", "set", str(menu_file), "--kiosk", "bar-1")
    published_at = time.monotonic()
    assert done.stdout.strip() == "config v2 published to bar-1", done.stdout + done.stderr
    state = kiosk.wait_for(
        lambda s: s["config"]["version"] == 2, "config version 2", timeout_s=CONFIG_ARRIVAL_S
    )
    arrival_s = time.monotonic() - published_at
    assert state["config"]["menu"] == "config" and state["config"]["menu_id"] == "central-bar"
    assert prices(kiosk) == {"beer": 550, "water": 250, "cup": 200, "cup-return": 200}
    print(f"menu set -> kiosk applied v2 in {arrival_s:.3f} s")

    shown = json.loads(festival.cli("menu", "show", "bar-1", "--json").stdout)
    assert (shown["version"], shown["published"]) == (2, True)
    assert shown["menu"]["items"][0] == MENU["items"][0]
    assert shown["offline"] == {
        "sale_max_cents": 2000,
        "card_max_cents": 4000,
        "kiosk_max_cents": 50000,
    }
    text = festival.cli("menu", "show", "bar-1").stdout
    assert "config v2 (published)" in text and "beer" in text and "5.50 EUR" in text

    # offline disable / set / menu clear: each a new version, applied by the kiosk.
    festival.cli("offline", "disable", "--kiosk", "bar-1")
    state = kiosk.wait_for(lambda s: s["config"]["version"] == 3, "v3", CONFIG_ARRIVAL_S)
    assert state["config"]["offline_allowed"] is False and state["config"]["menu"] == "config"
    festival.cli(
        "offline", "set", "--all", "--sale-max-cents", "1500", "--card-max-cents", "3000",
        "--kiosk-max-cents", "20000",
    )  # fmt: skip
    state = kiosk.wait_for(lambda s: s["config"]["version"] == 4, "v4", CONFIG_ARRIVAL_S)
    assert state["config"]["offline_allowed"] is True
    festival.cli("menu", "clear", "--role", "bar")
    state = kiosk.wait_for(lambda s: s["config"]["version"] == 5, "v5", CONFIG_ARRIVAL_S)
    assert state["config"]["menu"] == "file" and state["config"]["offline_allowed"] is True
    assert configs(festival, "bar-1") == [(version, True) for version in range(1, 6)]


def test_a_bad_menu_file_or_an_unknown_kiosk_issues_nothing(festival: Festival) -> None:
    festival.add_kiosk("bar-1")
    festival.add_kiosk("bar-2")
    bad = {**MENU, "items": [*MENU["items"][:1], {**MENU["items"][1], "unit_price_cents": -5}]}
    menu_file = write_menu(festival.folder, bad)
    failed = festival.cli("menu", "set", str(menu_file), "--all", check=False)
    assert failed.returncode == 1
    line = next(
        number
        for number, text in enumerate(menu_file.read_text().splitlines(), start=1)
        if '"unit_price_cents": -5' in text
    )
    assert failed.stderr.strip() == (
        f"festival-cloud menu set: {menu_file}:{line}: menu.items[1].unit_price_cents must be"
        " 0..100000, got -5; nothing issued"
    )
    good = write_menu(festival.folder, MENU, "good.json")
    unknown = festival.cli(
        "menu", "set", str(good), "--kiosk", "bar-1", "--kiosk", "bar-9", check=False
    )
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "festival-cloud menu set: no kiosk 'bar-9'; nothing issued"
    refused = festival.cli(
        "offline", "set", "--kiosk", "bar-1", "--sale-max-cents", "0", "--card-max-cents", "1",
        "--kiosk-max-cents", "1", check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "nothing issued" in refused.stderr
    assert configs(festival, "bar-1") == [(1, True)] and configs(festival, "bar-2") == [(1, True)]
    assert festival.cli("menu", "show", "bar-9", check=False).returncode == 1


def test_role_and_all_name_every_registered_kiosk_disabled_ones_too(festival: Festival) -> None:
    """DESIGN.md `menu set`: `--role R` is the kiosks registered with role R, `--all` every
    kiosk; like PUT /api/admin/menus (tests/api/test_menus.py), disabled ones included."""
    for kiosk_id, role in (("bar-1", "bar"), ("bar-2", "bar"), ("gate-b", "all")):
        festival.add_kiosk(kiosk_id, role)
    festival.add_kiosk("checkpoint-1", "checkpoint")
    festival.cli("kiosk", "disable", "bar-2")
    festival.cli("kiosk", "disable", "checkpoint-1")
    menu_file = write_menu(festival.folder, MENU)

    bars = festival.cli("menu", "set", str(menu_file), "--role", "bar")
    assert bars.stdout.splitlines() == [
        "config v2 published to bar-1",
        "config v2 published to bar-2",
    ], bars.stdout + bars.stderr
    # The only kiosk of a role disabled: still named (not "no kiosk"), and only it.
    checkpoints = festival.cli("menu", "set", str(menu_file), "--role", "checkpoint")
    assert checkpoints.stdout.splitlines() == ["config v2 published to checkpoint-1"]
    gates = festival.cli("menu", "clear", "--role", "all")  # role `all`, not every kiosk
    assert gates.stdout.splitlines() == ["config v2 published to gate-b"]
    everyone = festival.cli("offline", "disable", "--all")
    assert everyone.stdout.splitlines() == [
        "config v3 published to bar-1",
        "config v3 published to bar-2",
        "config v3 published to checkpoint-1",
        "config v3 published to gate-b",
    ], everyone.stdout + everyone.stderr
    cleared = festival.cli("menu", "clear", "--all")
    assert [line.split()[-1] for line in cleared.stdout.splitlines()] == [
        "bar-1", "bar-2", "checkpoint-1", "gate-b",
    ]  # fmt: skip
    assert configs(festival, "bar-2") == [(version, True) for version in range(1, 5)]
    assert configs(festival, "gate-b") == [(1, True), (2, True), (3, True), (4, True)]
    ledger = festival.ledger()
    try:
        latest = ledger.latest_config("bar-2")
        assert latest is not None
        assert latest.document["menu"] is None and latest.document["offline"] is None
    finally:
        ledger.engine.dispose()


def test_a_config_stored_while_the_broker_is_down_is_sent_by_the_consumer_versions_go_on(
    festival: Festival,
) -> None:
    kiosk, _ = festival.add_kiosk("bar-1")
    consumer = festival.consumer().start()
    kiosk.start()
    kiosk.wait_for(lambda s: s["online"] and s["config"]["version"] == 1, "v1")

    festival.broker.stop()
    menu_file = write_menu(festival.folder, MENU)
    stored = festival.cli("menu", "set", str(menu_file), "--kiosk", "bar-1")
    assert "stored, not published now (broker unavailable" in stored.stdout, stored.stdout
    assert "bar-1 v2" in stored.stdout and "the running consumer publishes them" in stored.stdout
    assert configs(festival, "bar-1") == [(1, True), (2, False)]
    festival.broker.start()
    state = kiosk.wait_for(
        lambda s: s["online"] and s["config"]["version"] == 2,
        "v2 from the consumer once the broker is back",
        timeout_s=RECONNECT_TIMEOUT_S,
    )
    assert state["config"]["menu_id"] == "central-bar"
    wait_until(
        lambda: configs(festival, "bar-1") == [(1, True), (2, True)],
        timeout_s=10,
        what="v2 marked published",
    )
    wait_until(lambda: consumer.events("config published"), timeout_s=10, what="its log line")
    assert [line["version"] for line in consumer.events("config published")] == [2]

    # Another process issues (as the admin API does: the database only); the consumer sends it.
    assert consumer.stop() == 0
    consumer.start()
    ledger = festival.ledger()
    try:
        repriced = Menu("central-bar", (MenuItem("beer", "Beer", 600),))
        issued_at = time.monotonic()
        assert ledger.issue_kiosk_config("bar-1", menu=repriced) == 3
        kiosk.wait_for(lambda s: s["config"]["version"] == 3, "v3", CONFIG_ARRIVAL_S)
        print(f"issued in the database -> kiosk applied v3 in {time.monotonic() - issued_at:.3f} s")
        assert prices(kiosk) == {"beer": 600}
    finally:
        ledger.engine.dispose()
    # marked published after the broker's PUBACK, which may come after the kiosk has it
    wait_until(
        lambda: configs(festival, "bar-1") == [(1, True), (2, True), (3, True)],
        timeout_s=10,
        what="v3 marked published",
    )


def test_the_denylist_reaches_the_kiosk_within_5_s_of_card_block_and_unblock(
    festival: Festival,
) -> None:
    kiosk, _ = festival.add_kiosk("bar-1")
    festival.add_kiosk("checkpoint-1", role="checkpoint")
    ledger = festival.ledger()
    try:
        assert ledger.apply(recharge(CARD, 1000)).status == "approved"
    finally:
        ledger.engine.dispose()
    festival.consumer().start()
    kiosk.start()
    kiosk.wait_for(lambda s: s["online"] and s["config"]["version"] == 1, "v1")

    festival.cli("card", "block", CARD, mqtt=False)  # the CLI does nothing but the database
    blocked_at = time.monotonic()
    state = kiosk.wait_for(
        lambda s: (s["denylist"] or {}).get("cards") == 1,
        "the deny-list with the blocked card",
        timeout_s=DENYLIST_ARRIVAL_S,
    )
    print(f"card block -> deny-list at the kiosk in {time.monotonic() - blocked_at:.3f} s")
    first = state["denylist"]["version"]
    festival.cli("card", "unblock", CARD, mqtt=False)
    state = kiosk.wait_for(
        lambda s: s["denylist"]["version"] > first and s["denylist"]["cards"] == 0,
        "the deny-list without it",
        timeout_s=DENYLIST_ARRIVAL_S,
    )

    # A kiosk that boots later gets the retained latest at once.
    late, _ = festival.add_kiosk("bar-2")
    late.start()
    late.wait_for(
        lambda s: s["online"] and s["denylist"] == state["denylist"], "the retained deny-list"
    )


def test_two_consumers_publish_once_between_them(festival: Festival) -> None:
    kiosk, _ = festival.add_kiosk("bar-1")
    first = festival.consumer().start()
    second = festival.consumer().start()
    kiosk.start()
    kiosk.wait_for(lambda s: s["online"] and s["config"]["version"] == 1, "v1")
    wait_until(
        lambda: (
            len(first.events("publishing loop leader") + second.events("publishing loop leader"))
            == 1
        ),
        timeout_s=10,
        what="one leader",
    )
    ledger = festival.ledger()
    try:
        for version in (2, 3, 4):
            assert ledger.issue_kiosk_config("bar-1", menu=None) == version
            kiosk.wait_for(lambda s, v=version: s["config"]["version"] == v, f"v{version}")
    finally:
        ledger.engine.dispose()

    def published() -> list[int]:
        lines = [line for c in (first, second) for line in c.events("config published")]
        return sorted(line["version"] for line in lines)

    # The leader logs "config published" when the broker has acknowledged the message, which
    # may be a moment after the kiosk has it: wait for the line, then check nothing went twice.
    wait_until(lambda: 4 in published(), timeout_s=10, what="v4's published line")
    assert published() == [2, 3, 4]
    # The leader goes away: the other takes over (its lock attempt at its next wait).
    leader, standby = (first, second) if first.events("publishing loop leader") else (second, first)
    assert leader.stop() == 0
    wait_until(lambda: standby.events("publishing loop leader"), timeout_s=10, what="a new leader")
    ledger = festival.ledger()
    try:
        assert ledger.issue_kiosk_config("bar-1", menu=None) == 5
    finally:
        ledger.engine.dispose()
    kiosk.wait_for(lambda s: s["config"]["version"] == 5, "v5 from the new leader")
