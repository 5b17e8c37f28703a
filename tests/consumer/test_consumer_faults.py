"""Faults in the middle of a burst of orders: the consumer SIGKILLed and restarted, SIGTERMed,
Mosquitto restarted, PostgreSQL stopped for a few seconds, two consumers sharing the load.

In each case every request ends with exactly one outcome (one permanent record; any repeated
result is a replay of it), every balance is exact and `festival-cloud check` passes. These tests
use their own Mosquitto (and, for the database outage, their own PostgreSQL), so restarting
them disturbs no other test.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.database import make_engine, service_url, upgrade
from cloud.ledger import Ledger
from cloud.sandbox import MosquittoBroker, PostgresServer
from protocol.errors import Status
from protocol.keys import generate_private_key, public_key_b64
from protocol.models import BarOrder, Result
from tests.consumer.conftest import CloudKey, LedgerDatabase
from tests.consumer.kiosk_client import KioskClient, uuid7
from tests.consumer.support import ConsumerProcess, festival_cloud
from tests.waiting import wait_until

BARS = ("bar-1", "bar-2", "bar-3")
CHECKPOINT = "checkpoint-1"
CARDS = tuple(f"B{index:07X}" for index in range(1, 7))
FUNDED_CENTS = 50_000
PRICE_CENTS = 100
ORDERS = 360
ANSWER_TIMEOUT_S = 60.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broker(service_dirs: Callable[[str], Path]) -> Iterator[MosquittoBroker]:
    own = MosquittoBroker(service_dirs("fault-broker"))
    for user in ("cloud-consumer", "cloud-consumer-2"):
        own.add_user(user, role="cloud")
    for kiosk_id in (*BARS, CHECKPOINT):
        own.add_user(kiosk_id)
    own.start()
    yield own
    own.stop()


@pytest.fixture(scope="module")
def keys() -> dict[str, Ed25519PrivateKey]:
    return {kiosk_id: generate_private_key() for kiosk_id in (*BARS, CHECKPOINT)}


@dataclass
class Scenario:
    """A registered set of kiosks and funded cards, a consumer factory and the checks."""

    owner_url: str
    consumer_url: str
    broker: MosquittoBroker
    cloud_key: CloudKey
    keys: dict[str, Ed25519PrivateKey]
    workdir: Path
    consumers: list[ConsumerProcess] = field(default_factory=list)
    kiosks: dict[str, KioskClient] = field(default_factory=dict)
    orders: list[tuple[KioskClient, BarOrder]] = field(default_factory=list)

    def setup(self) -> None:
        engine = make_engine(self.owner_url, pool_size=1)
        try:
            ledger = Ledger(engine)
            for kiosk_id in BARS:
                ledger.add_kiosk(kiosk_id, public_key_b64(self.keys[kiosk_id]), "bar")
            ledger.add_kiosk(CHECKPOINT, public_key_b64(self.keys[CHECKPOINT]), "checkpoint")
        finally:
            engine.dispose()
        cloud_public = self.cloud_key.private_key.public_key()
        for kiosk_id, key in self.keys.items():
            self.kiosks[kiosk_id] = KioskClient(
                self.broker.url(kiosk_id), kiosk_id, key, cloud_public
            ).connect()

    def consumer(
        self, name: str = "consumer-fault", user: str = "cloud-consumer"
    ) -> ConsumerProcess:
        process = ConsumerProcess(
            database_url=self.consumer_url,
            mqtt_url=self.broker.url(user),
            signing_key_file=self.cloud_key.path,
            consumer_id=f"{name}-{uuid7()[-8:]}",
            workdir=self.workdir,
            batch_max=16,  # many batches in a short burst: faults land between and inside them
        )
        self.consumers.append(process)
        return process

    def fund_cards(self) -> None:
        checkpoint = self.kiosks[CHECKPOINT]
        for card_uid in CARDS:
            recharge = checkpoint.recharge(card_uid, FUNDED_CENTS)
            checkpoint.send(recharge)
            assert checkpoint.wait_result(recharge.request_id).status is Status.APPROVED

    def start_burst(self, count: int = ORDERS, pace_s: float = 0.004) -> threading.Thread:
        """Send ``count`` orders round-robin over bars and cards, paced, from a thread."""
        bars = [self.kiosks[kiosk_id] for kiosk_id in BARS]
        self.orders = [
            (bars[n % len(bars)], bars[n % len(bars)].bar_order(CARDS[n % len(CARDS)], PRICE_CENTS))
            for n in range(count)
        ]

        def send() -> None:
            for kiosk, order in self.orders:
                kiosk.send(order, wait=False)
                time.sleep(pace_s)

        thread = threading.Thread(target=send, name="burst")
        thread.start()
        return thread

    def answered(self) -> int:
        return sum(1 for kiosk, order in self.orders if kiosk.results_for(order.request_id))

    def wait_answered(self, fraction: float, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        wanted = int(len(self.orders) * fraction)
        try:
            wait_until(
                lambda: self.answered() >= wanted,
                timeout_s=timeout_s,
                interval_s=0.005,
                what=f"{wanted} of {len(self.orders)} answered",
            )
        except AssertionError as error:
            raise AssertionError(f"{error}; {self.diagnosis()}") from None

    def diagnosis(self) -> str:
        """Where the unanswered requests got stuck (for a failing test's message)."""
        missing = [
            (kiosk.kiosk_id, order.request_id)
            for kiosk, order in self.orders
            if not kiosk.results_for(order.request_id)
        ]
        if not missing:
            return "all answered"
        engine = make_engine(self.owner_url, pool_size=1)
        try:
            with engine.connect() as connection:
                recorded = connection.execute(
                    sqlalchemy.text(
                        "SELECT count(*) FROM processed_requests WHERE request_id = ANY(:ids)"
                    ),
                    {"ids": [request_id for _, request_id in missing]},
                ).scalar_one()
        finally:
            engine.dispose()
        logged = {
            entry.get("request_id")
            for process in self.consumers
            for entry in process.events("request processed")
        }
        seen = sum(1 for _, request_id in missing if request_id in logged)
        return (
            f"{len(missing)} unanswered (first {missing[:3]}); {recorded} of them recorded in"
            f" the database, {seen} logged as processed by a consumer"
        )

    def assert_exactly_once(self) -> None:
        """Every order answered, all approved, one record each, balances exact, check passes."""
        self.wait_answered(1.0)
        for kiosk, order in self.orders:
            received = kiosk.received_for(order.request_id)
            results: list[Result] = [r.result for r in received if r.result is not None]
            assert results[0].status is Status.APPROVED, results[0]
            assert {r.transaction_id for r in results} == {results[0].transaction_id}
            # More than one answer happens: a QoS 1 redelivery of the same signed result (same
            # bytes), or a replay of the stored outcome after a crash. Never a second outcome.
            originals = {r.raw for r in received if r.result and not r.result.replayed}
            assert len(originals) <= 1, results
        engine = make_engine(self.owner_url, pool_size=1)
        try:
            ledger = Ledger(engine)
            request_ids = [order.request_id for _, order in self.orders]
            with engine.connect() as connection:
                records = connection.execute(
                    sqlalchemy.text(
                        "SELECT count(*), count(DISTINCT request_id) FROM processed_requests"
                        " WHERE request_id = ANY(:ids) AND status = 'approved'"
                    ),
                    {"ids": request_ids},
                ).one()
                transactions = connection.execute(
                    sqlalchemy.text(
                        "SELECT count(*) FROM transactions WHERE request_id = ANY(:ids)"
                    ),
                    {"ids": request_ids},
                ).scalar_one()
            assert tuple(records) == (len(self.orders), len(self.orders))
            assert transactions == len(self.orders)
            per_card = len(self.orders) // len(CARDS)
            for card_uid in CARDS:
                card = ledger.card(card_uid)
                assert card is not None
                assert card.balance_cents == FUNDED_CENTS - per_card * PRICE_CENTS, card_uid
            assert ledger.check() == []
        finally:
            engine.dispose()
        festival_cloud("check", database_url=self.owner_url)

    def close(self) -> None:
        for kiosk in self.kiosks.values():
            kiosk.close()
        for process in self.consumers:
            process.close()


@pytest.fixture()
def scenario(
    make_database: Callable[..., str],
    migrated_template: str,
    broker: MosquittoBroker,
    cloud_key: CloudKey,
    keys: dict[str, Ed25519PrivateKey],
    service_dirs: Callable[[str], Path],
) -> Iterator[Scenario]:
    owner = make_database(template=migrated_template)
    database = LedgerDatabase(owner, service_url(owner))
    workdir = service_dirs("fault-logs")
    built = Scenario(database.owner_url, database.service_url, broker, cloud_key, keys, workdir)
    try:
        built.setup()
        yield built
    finally:
        built.close()


def test_sigkill_in_the_middle_of_a_burst_then_restart(scenario: Scenario) -> None:
    consumer = scenario.consumer().start()
    scenario.fund_cards()
    burst = scenario.start_burst()
    scenario.wait_answered(0.3)
    consumer.kill()
    answered_at_kill = scenario.answered()
    burst.join()
    assert answered_at_kill < len(scenario.orders)
    consumer.start()  # same client id: the durable session hands back what was never acked
    scenario.assert_exactly_once()


def test_sigterm_finishes_what_is_in_hand_and_exits_zero(scenario: Scenario) -> None:
    consumer = scenario.consumer().start()
    scenario.fund_cards()
    burst = scenario.start_burst()
    scenario.wait_answered(0.3)
    assert consumer.stop() == 0
    assert consumer.events("stopped"), consumer.log_text()[-2000:]
    assert "STOPPING=1" in consumer.read_notifications()
    burst.join()
    consumer.start()
    scenario.assert_exactly_once()


def test_mosquitto_restart_in_the_middle_of_a_burst(scenario: Scenario) -> None:
    """Mosquitto 2.0 forgets shared subscriptions on restart (it restores plain ones): what a
    kiosk publishes before the consumer has subscribed again is answered "no matching
    subscribers" by the broker, and the kiosk's outbox sends it again, as a real kiosk does."""
    consumer = scenario.consumer().start()
    scenario.fund_cards()
    burst = scenario.start_burst()
    scenario.wait_answered(0.3)
    scenario.broker.restart()
    burst.join()
    for kiosk in scenario.kiosks.values():
        kiosk.wait_connected()
    resent: list[bytes] = []

    def settled() -> bool:
        for kiosk in scenario.kiosks.values():
            for raw in kiosk.take_unrouted():
                resent.append(raw)
                kiosk.send(raw, wait=False)
        return scenario.answered() == len(scenario.orders)

    try:
        wait_until(settled, timeout_s=ANSWER_TIMEOUT_S, interval_s=0.2, what="all answered")
    except AssertionError as error:
        raise AssertionError(f"{error}; {scenario.diagnosis()}") from None
    print(f"{len(resent)} requests resent after 'no matching subscribers'")
    scenario.assert_exactly_once()
    assert consumer.events("broker unavailable") and consumer.events("broker connected")
    assert consumer.process is not None and consumer.process.poll() is None


def test_two_consumers_on_the_shared_subscription(scenario: Scenario) -> None:
    first = scenario.consumer("consumer-a").start()
    second = scenario.consumer("consumer-b", user="cloud-consumer-2").start()
    scenario.fund_cards()
    scenario.start_burst().join()
    scenario.assert_exactly_once()
    handled = [len(process.events("request processed")) for process in (first, second)]
    assert all(count > 0 for count in handled), handled  # both took a share
    assert sum(handled) == len(scenario.orders) + len(CARDS)


@pytest.fixture()
def own_postgres(service_dirs: Callable[[str], Path]) -> Iterator[PostgresServer]:
    server = PostgresServer(service_dirs("fault-postgres"), durable=False)
    server.start()
    yield server
    server.stop()


def test_postgresql_away_for_a_few_seconds(
    own_postgres: PostgresServer,
    broker: MosquittoBroker,
    cloud_key: CloudKey,
    keys: dict[str, Ed25519PrivateKey],
    service_dirs: Callable[[str], Path],
) -> None:
    owner = own_postgres.create_database("ledger")
    upgrade(owner, "head")
    workdir = service_dirs("fault-logs")
    scenario = Scenario(owner, service_url(owner), broker, cloud_key, keys, workdir)
    try:
        scenario.setup()
        consumer = scenario.consumer().start()
        scenario.fund_cards()
        burst = scenario.start_burst()
        scenario.wait_answered(0.3)
        own_postgres.stop()
        stopped_at = time.monotonic()
        wait_until(lambda: consumer.events("database unavailable"), timeout_s=10, what="the outage")
        answered_during_outage = scenario.answered()
        # Keep it down for ~3 s while the consumer keeps retrying (it must not exit).
        wait_until(
            lambda: time.monotonic() - stopped_at >= 3.0 and database_retries(consumer) >= 5,
            timeout_s=20,
            what="retries during the outage",
        )
        # Nothing is answered while the database is away: no result without a commit.
        assert scenario.answered() == answered_during_outage
        assert consumer.process is not None and consumer.process.poll() is None
        own_postgres.start()
        burst.join()
        scenario.assert_exactly_once()
        assert len(consumer.events("database unavailable")) == 1  # once, not per retry
        assert len(consumer.events("database back")) == 1
        assert consumer.process is not None and consumer.process.poll() is None
    finally:
        scenario.close()


def database_retries(consumer: ConsumerProcess) -> float:
    url = f"http://127.0.0.1:{consumer.metrics_port}/metrics"
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line.startswith("festival_consumer_database_retries_total "):
            return float(line.split()[1])
    return 0.0
