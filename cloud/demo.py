"""`festival-demo`: the whole system on one machine (what `./run demo` runs).

It starts, as children of this process: embedded PostgreSQL (data kept in `var/demo/` between runs
unless `--fresh`), Mosquitto with generated credentials and the kiosk ACL, the migrations, a cloud
signing key, N kiosks (bars and checkpoints) each with its own key and outbox running the real
firmware (`festival-kiosk run`, simulated reader, fake GPIO), the consumer, the HTTP API and a local
fake Stripe. Simulated attendees then use the kiosks' real local interface — top-ups first, then
bar orders with cup deposits and returns, some declines — and a few pay online through Checkout and
the real webhook path. Ctrl-C (or `--duration`) stops everything it started, by pid, after a final
summary and the ledger check; the exit code is 0 only if the ledger check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cloud.admin import _euros as _eur
from cloud.demo_wristbands import DemoWristbands
from cloud.limits import (
    DEMO_HTTP_TIMEOUT_S,
    DEMO_READY_TIMEOUT_S,
    DEMO_REFUND_TIMEOUT_S,
    DEMO_RESULT_TIMEOUT_S,
)
from cloud.sandbox import MosquittoBroker, PostgresServer, free_port, stop_process
from cloud.settings import CloudSettings

DEMO_ROOT_DEFAULT = Path.cwd() / "var" / "demo"
TOPIC_PREFIX = "festival"
CLOUD_MQTT_USER = "cloud-consumer"
API_PORT_PREFERRED = 8000
POLL_INTERVAL_S = 0.01
PROGRESS_INTERVAL_S = 2.0
ONLINE_TOPUP_INTERVAL_S = 5.0
TOPUP_AMOUNTS_CENTS = (2000, 3000, 5000, 10000)
BLOCKED_CARD_COUNT = 1
# Broker credentials of a kiosk that never runs (a spare Pi's SD card): the demo's attacks use them.
SPARE_KIOSK_ID = "spare-1"
# (1.1) The central menu the demo assigns to its bars (`festival-cloud menu set --role bar`), the
# local file's drinks at the local file's prices; the deposit and its return are items of their
# own (a config's menu is flat), and part-way through one price changes.
DEMO_MENU_ID = "demo-bars"
DEMO_DEPOSIT_SKU = "cup"
DEMO_RETURN_SKU = "cup-return"
DEMO_MENU_ITEMS: tuple[tuple[str, str, int, bool], ...] = (  # sku, name, price, takes a cup
    ("beer", "Beer 0.5 l", 550, True),
    ("radler", "Radler 0.5 l", 550, True),
    ("wine", "Wine 0.2 l", 650, True),
    ("cola", "Cola 0.4 l", 400, True),
    ("water", "Water 0.5 l", 300, True),
    ("mate", "Club-Mate 0.5 l", 450, False),
    ("longdrink", "Long drink", 900, True),
    ("shot", "Shot 2 cl", 350, False),
)
DEMO_CUP_CENTS = 200
# Attendees who ask for their money back at the end (issue 16 §2).
DEMO_PAYOUTS = 3
DEMO_DEBTOR_IBAN, DEMO_DEBTOR_BIC = "DE02120300000000202051", "BYLADEM1001"  # a test IBAN
DEMO_SHIFT_SHORT_CENTS = 50  # the checkpoint's drawer is counted 0.50 short at the shift close
# (revision 0024) the demo's registered staff: id -> (name, role, their own staff band)
DEMO_STAFF: Final = {
    "anna": ("Anna", "supervisor", "04D5A0000000A1"),
    "ben": ("Ben", "bartender", "04D5A0000000B2"),
}
DEMO_PAYOUT_TOPUP_CENTS = 2000  # the portal attendee's online top-up before asking for it back
DEMO_REPRICED_SKU = "beer"
DEMO_REPRICED_CENTS = 600
# Without --duration the price changes this long after the traffic started.
DEMO_REPRICE_AFTER_S = 30.0
# (1.1) One bar is cut off the broker for real (its MQTT login refused and its session kicked
# through the broker's control topic) and sells offline: without --duration after this long,
# for about DEMO_OFFLINE_FOR_S (a short --duration shortens it).
DEMO_OFFLINE_AFTER_S = 40.0
DEMO_OFFLINE_FOR_S = 20.0
# (1.1, issue 14 §3) One attendee, kept out of the random traffic, is topped up with this, buys
# DEMO_DEBT_ORDER (more than the balance) at the bar while it is offline, and pays the debt with
# a DEMO_DEBT_TOPUP_CENTS top-up once the backlog drained.
DEMO_DEBTOR_START_CENTS = 500
# Shots (no cup), one more than the balance pays for: the balance left by an earlier run (below
# the top-up) keeps the order within the offline policy's per-sale limit run after run.
DEMO_DEBT_SKU, DEMO_DEBT_SKU_CENTS = "shot", 350
DEMO_DEBT_TOPUP_CENTS = 1000
UNKNOWN_CARD_SHARE = 0.04  # taps of wristbands nobody ever topped up (CARD_NOT_FOUND)
STAFF_IDS = ("anna", "ben", "chris", "dana", "emil")
PRODUCT_WEIGHTS = {
    "beer": 40,
    "radler": 8,
    "wine": 10,
    "cola": 12,
    "water": 12,
    "mate": 8,
    "longdrink": 6,
    "shot": 4,
}


class DemoError(RuntimeError):
    """A part of the demo could not start; the message says which and where its log is."""


# --------------------------------------------------------------------------------------------
# Processes and HTTP
# --------------------------------------------------------------------------------------------


@dataclass
class ChildProcess:
    """One service we started; stopped by its pid, its output kept in a log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_file: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM)

    def tail(self, characters: int = 1500) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-characters:]
        except OSError:
            return ""


def http_json(
    method: str,
    url: str,
    body: object = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = DEMO_HTTP_TIMEOUT_S,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (loopback)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            payload = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as error:
        payload = error.read()
        status = int(error.code)
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


def _all_paid(counts: tuple[int, int, int]) -> bool:
    return counts[0] == counts[1]


def wait_for(
    condition: Callable[[], bool], what: str, timeout_s: float = DEMO_READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise DemoError(f"{what} not ready within {timeout_s:.0f} s")


def _http_ok(url: str) -> bool:
    status, _ = http_json("GET", url, timeout_s=2)
    return status == 200


def _preferred_port(port: int) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


# --------------------------------------------------------------------------------------------
# Kiosks and attendees
# --------------------------------------------------------------------------------------------


@dataclass
class DemoKiosk:
    """A festival-kiosk child process of the demo (not device.kiosk.Kiosk, the firmware shell)."""

    kiosk_id: str
    role: str  # "bar" or "checkpoint"
    http_port: int
    process: ChildProcess | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (1.1, sun mode) the attendees' genuine bands: each tap reads one (cloud/demo_wristbands.py)
    wristbands: DemoWristbands | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def state(self) -> dict[str, Any]:
        status, state = http_json("GET", f"{self.base_url}/api/state")
        if status != 200 or not isinstance(state, dict):
            raise DemoError(f"{self.kiosk_id}: /api/state answered {status}")
        return state

    def transact(
        self, entry: dict[str, Any], card_uid: str, *, genuine: bool = True
    ) -> dict[str, Any] | None:
        """Enter an order or a top-up, tap the wristband, wait for the verified result. In sun
        mode the tap reads the attendee's band (its SUN message rides along); ``genuine=False``
        is a copy of the UID on a UID-only card (no SUN message)."""
        band = self.wristbands.tap(card_uid) if self.wristbands and genuine else nullcontext()
        with self.lock, band as card_sun:
            http_json("POST", f"{self.base_url}/api/dismiss", {})
            path = "/api/order" if self.role == "bar" else "/api/recharge"
            status, reply = http_json("POST", self.base_url + path, entry)
            if status != 200:
                raise DemoError(f"{self.kiosk_id}{path} answered {status}: {reply}")
            tap: dict[str, Any] = {"card_uid": card_uid}
            if card_sun is not None:
                tap["card_sun"] = card_sun
            status, reply = http_json("POST", f"{self.base_url}/api/tap", tap)
            if status != 202:
                raise DemoError(f"{self.kiosk_id}/api/tap answered {status}: {reply}")
            deadline = time.monotonic() + DEMO_RESULT_TIMEOUT_S
            while time.monotonic() < deadline:
                state = self.state()
                outcome = state.get("outcome")
                request = state.get("request") or {}
                if (
                    state.get("screen") in ("approved", "declined")
                    and isinstance(outcome, dict)
                    and outcome.get("request_id") == request.get("request_id")
                ):
                    http_json("POST", f"{self.base_url}/api/dismiss", {})
                    return outcome
                if state.get("screen") in ("offline", "timed_out"):
                    # Stored, unanswered (the link went down after it was sent, or before it
                    # was): the kiosk applies its result once it arrives; move on.
                    return None
                if state.get("screen") == "approved_offline":
                    # (1.1) Approved by the kiosk itself: stored, sent when the link is back.
                    http_json("POST", f"{self.base_url}/api/dismiss", {})
                    order = state.get("order") or {}
                    return {"approved": True, "offline": True, **_total(order)}
                if state.get("screen") == "order_pending" and state.get("notice"):
                    # (1.1) Offline and not allowed (a return line, over a limit): refused on
                    # the spot, nothing was signed or stored.
                    http_json("POST", f"{self.base_url}/api/cancel", {})
                    return {"approved": False, "error_code": "refused offline"}
                time.sleep(POLL_INTERVAL_S)
            return None  # still pending at the kiosk: it will be applied once when it arrives


def _total(order: dict[str, Any]) -> dict[str, int]:
    total = order.get("total_cents")
    return {"amount_cents": total} if isinstance(total, int) else {}


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    sales_cents: int = 0
    topups_cents: int = 0
    online_topups: int = 0
    online_topups_cents: int = 0
    timeouts: int = 0
    offline_approved: int = 0
    debt_paid: bool = False
    payouts: int = 0
    clone_refused: bool = False
    swapped: bool = False
    voided: bool = False
    sepa_file: str = ""
    shift_closed: bool = False
    staff_logged_in: list[str] = field(default_factory=list)
    cashed_out: str = ""
    stripe_refunds: int = 0
    errors: list[str] = field(default_factory=list)
    started_s: float = field(default_factory=time.monotonic)

    def record(self, role: str, outcome: dict[str, Any] | None, amount_cents: int) -> None:
        with self.lock:
            if outcome is None:
                self.timeouts += 1
                return
            if outcome.get("approved"):
                self.outcomes["approved"] += 1
                if outcome.get("offline"):
                    self.offline_approved += 1
                if role == "bar":
                    self.sales_cents += amount_cents
                else:
                    self.topups_cents += amount_cents
            else:
                self.outcomes[str(outcome.get("error_code") or outcome.get("status"))] += 1

    def error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(text)

    def line(self) -> str:
        with self.lock:
            total = sum(self.outcomes.values())
            elapsed_s = max(time.monotonic() - self.started_s, 1e-3)
            declines = ", ".join(
                f"{code} {count}"
                for code, count in sorted(self.outcomes.items())
                if code != "approved"
            )
            return (
                f"{elapsed_s:6.0f} s  {total} payments ({total / elapsed_s:.1f}/s): "
                f"{self.outcomes['approved']} approved; declined: {declines or 'none'}; "
                f"sales {self.sales_cents / 100:.2f}, top-ups {self.topups_cents / 100:.2f}, "
                f"online {self.online_topups} ({self.online_topups_cents / 100:.2f})"
                + (f"; {self.offline_approved} offline" if self.offline_approved else "")
                + (f"; {self.timeouts} still pending" if self.timeouts else "")
                + (f"; {len(self.errors)} errors" if self.errors else "")
            )


def card_uids(count: int) -> list[str]:
    """Stable 7-byte NTAG-style UIDs, so a second run finds the same wristbands."""
    generator = random.Random(20260726)
    return [
        "04" + "".join(f"{generator.randrange(256):02X}" for _ in range(6)) for _ in range(count)
    ]


def bar_order(generator: random.Random) -> tuple[dict[str, Any], int]:
    """A bartender's order: 1 to 3 drinks (cup deposits added by the kiosk), sometimes cups back."""
    skus = list(PRODUCT_WEIGHTS)
    weights = list(PRODUCT_WEIGHTS.values())
    items: Counter[str] = Counter()
    for _ in range(generator.choice((1, 1, 1, 2, 2, 3))):
        items[generator.choices(skus, weights)[0]] += 1
    returns = generator.choice((0, 0, 0, 1, 2))
    # The central menu's deposit is an item of its own: the bartender taps one cup per drink
    # that comes in one (the kiosk adds none by itself for a config's menu).
    cups = sum(quantity for sku, quantity in items.items() if sku in CUP_SKUS)
    if cups:
        items[DEMO_DEPOSIT_SKU] += cups
    entry: dict[str, Any] = {
        "items": [{"sku": sku, "quantity": quantity} for sku, quantity in items.items()],
        "staff_id": generator.choice(STAFF_IDS),
    }
    if returns:
        entry["returns"] = [{"sku": DEMO_RETURN_SKU, "quantity": returns}]
    return entry, 0


CUP_SKUS = frozenset(sku for sku, _, _, cup in DEMO_MENU_ITEMS if cup)


def demo_menu(prices: dict[str, int] | None = None) -> dict[str, Any]:
    """The central menu (a config's `menu` object), with ``prices`` overriding some."""
    chosen = prices or {}
    items: list[dict[str, Any]] = [
        {
            "sku": sku,
            "name": name,
            "unit_price_cents": chosen.get(sku, cents),
            "vat_rate_bp": 1900,
            "category": "drinks",
        }
        for sku, name, cents, _ in DEMO_MENU_ITEMS
    ]
    items.append(
        {
            "sku": DEMO_DEPOSIT_SKU,
            "name": "Cup deposit",
            "unit_price_cents": DEMO_CUP_CENTS,
            "is_deposit": True,
        }
    )
    items.append(
        {
            "sku": DEMO_RETURN_SKU,
            "name": "Cup return",
            "unit_price_cents": DEMO_CUP_CENTS,
            "is_deposit": True,
            "is_return": True,
        }
    )
    return {"menu_id": DEMO_MENU_ID, "items": items}


def recharge(generator: random.Random) -> tuple[dict[str, Any], int]:
    amount_cents = generator.choice(TOPUP_AMOUNTS_CENTS)
    entry = {
        "amount_cents": amount_cents,
        "payment_method": generator.choice(("cash", "cash", "card")),
        "staff_id": generator.choice(STAFF_IDS),
    }
    return entry, amount_cents


# --------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------


@dataclass
class Demo:
    root: Path
    kiosk_count: int
    card_count: int
    rate_per_s: float
    out: Any = sys.stdout
    stop: threading.Event = field(default_factory=threading.Event)
    # Set once the part-way price change is over (applied, failed or stopped): the bar cut off
    # later waits for it, so every bar runs the new menu first.
    repriced: threading.Event = field(default_factory=threading.Event)
    children: list[ChildProcess] = field(default_factory=list)
    kiosks: list[DemoKiosk] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    postgres: PostgresServer | None = None
    broker: MosquittoBroker | None = None
    stripe: Any = None
    api_url: str = ""
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    webhook_secret: str = field(default_factory=lambda: "whsec_" + secrets.token_hex(16))
    owner_url: str = ""
    cards: list[str] = field(default_factory=list)
    cli_env: dict[str, str] = field(default_factory=dict)
    menu_versions: dict[str, int] = field(default_factory=dict)
    card_auth: str = "sun"  # FESTIVAL_CARD_AUTH of the demo's cloud (--card-auth)
    portal_pin: str = ""  # the PIN `card pin` gave the first attendee's band
    wristbands: DemoWristbands | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # --- start-up ------------------------------------------------------------------------------

    def _python_bin(self, name: str) -> str:
        candidate = Path(sys.executable).parent / name
        found = str(candidate) if candidate.exists() else shutil.which(name)
        if not found:
            raise DemoError(f"{name} not found next to {sys.executable}: pip install -e '.[dev]'")
        return found

    def _child(self, name: str, args: list[str], env: dict[str, str]) -> ChildProcess:
        child = ChildProcess(name, args, env, self.root / "logs" / f"{name}.log")
        child.start()
        self.children.append(child)
        return child

    def start(self) -> None:
        from cloud.database import make_engine, service_url, upgrade
        from cloud.keys import load_private_key, save_private_key
        from cloud.ledger import Ledger
        from cloud.stripe_fake import FakeStripe
        from protocol.keys import generate_private_key, public_key_b64

        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        keys = self.root / "keys"
        keys.mkdir(mode=0o700, exist_ok=True)

        self.postgres = PostgresServer(self.root / "postgres", durable=True)
        self.postgres.start()
        self.owner_url = self.postgres.url()
        upgrade(self.owner_url)
        services_url = service_url(self.owner_url)
        api_url = service_url(self.owner_url, "festival_api")
        self.say(f"PostgreSQL   127.0.0.1:{self.postgres.port} (data: {self.postgres.data_dir})")

        def key(name: str) -> tuple[Path, str]:
            path = keys / f"{name}.pem"
            if not path.exists():
                save_private_key(generate_private_key(), path)
            return path, public_key_b64(load_private_key(path))

        cloud_key_file, cloud_public_key = key("cloud")
        checkpoint_count = max(1, self.kiosk_count // 4)
        roles = ["checkpoint"] * checkpoint_count + ["bar"] * max(
            1, self.kiosk_count - checkpoint_count
        )
        numbers: Counter[str] = Counter()
        for role in roles:
            numbers[role] += 1
            kiosk_id = f"{role}-{numbers[role]}"
            self.kiosks.append(DemoKiosk(kiosk_id, role, free_port()))

        self.broker = MosquittoBroker(self.root / "mosquitto", prefix=TOPIC_PREFIX)
        self.broker.add_user(CLOUD_MQTT_USER, role="cloud")
        for kiosk in self.kiosks:
            self.broker.add_user(kiosk.kiosk_id)
        # Credentials of a kiosk that is not running (a spare Pi): the attacks below use them.
        self.broker.add_user(SPARE_KIOSK_ID)
        self.broker.start()
        self.say(
            f"Mosquitto    mqtt://127.0.0.1:{self.broker.port} (generated by broker config: "
            f"{self.broker.config_file})"
        )

        engine = make_engine(self.owner_url, pool_size=1, application_name="festival-demo")
        try:
            ledger = Ledger(engine)
            # As `festival-cloud kiosk add` does: registered, then config version 1 (no menu,
            # the deployment's default offline policy, FESTIVAL_OFFLINE_*) issued; the
            # consumer's publishing loop sends it once it runs.
            offline = CloudSettings.model_construct().default_offline_policy
            for kiosk in self.kiosks:
                _, public_key = key(kiosk.kiosk_id)
                ledger.add_kiosk(kiosk.kiosk_id, public_key, kiosk.role)
                if ledger.latest_config(kiosk.kiosk_id) is None:
                    ledger.issue_kiosk_config(kiosk.kiosk_id, menu=None, offline=offline)
        finally:
            engine.dispose()

        base_env = {
            key_: value
            for key_, value in os.environ.items()
            if not key_.startswith(("KIOSK_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        api_port = _preferred_port(API_PORT_PREFERRED)
        self.api_url = f"http://127.0.0.1:{api_port}"
        cloud_env = {
            **base_env,
            "DATABASE_URL": services_url,
            "FESTIVAL_TOPIC_PREFIX": TOPIC_PREFIX,
            "FESTIVAL_ENVIRONMENT": "development",
            "CLOUD_SIGNING_KEY_FILE": str(cloud_key_file),
            # (1.1) what a genuine band's URL opens (GET /t logs the phone into the portal)
            "FESTIVAL_PORTAL_URL": self.api_url,
        }
        if self.card_auth == "sun":
            cloud_env.update(
                FESTIVAL_CARD_AUTH="sun", CARD_MASTER_KEY_FILE=str(self._card_master_key(keys))
            )
        # The operator's CLI (menu set): the owner's database URL, the cloud's MQTT user and key.
        self.cli_env = {
            **cloud_env,
            "DATABASE_URL": self.owner_url,
            "MQTT_URL": self.broker.url(CLOUD_MQTT_USER),
            # (1.1) the festival's own bank account: the debtor of `payout export`'s SEPA file
            "FESTIVAL_PAYOUT_DEBTOR_NAME": "Demo Festival GmbH",
            "FESTIVAL_PAYOUT_DEBTOR_IBAN": DEMO_DEBTOR_IBAN,
            "FESTIVAL_PAYOUT_DEBTOR_BIC": DEMO_DEBTOR_BIC,
        }
        self._child(
            "consumer",
            [self._python_bin("festival-cloud"), "consumer"],
            {
                **cloud_env,
                "MQTT_URL": self.broker.url(CLOUD_MQTT_USER),
                "CONSUMER_ID": "demo-consumer-1",
                "CONSUMER_METRICS_PORT": str(free_port()),
            },
        )

        self.stripe = FakeStripe()
        stripe_base = self.stripe.start()
        self.stripe.webhook_url = f"{self.api_url}/stripe/webhook"
        self.stripe.webhook_secret = self.webhook_secret
        api = self._child(
            "api",
            [
                self._python_bin("festival-cloud"),
                "api",
                "--host",
                "127.0.0.1",
                "--port",
                str(api_port),
            ],
            {
                **cloud_env,
                "DATABASE_URL": api_url,  # least privilege: the API's own role
                "ADMIN_TOKEN": self.admin_token,
                "STRIPE_SECRET_KEY": "sk_test_demo_" + secrets.token_hex(12),
                "STRIPE_WEBHOOK_SECRET": self.webhook_secret,
                "STRIPE_API_BASE": stripe_base,
                "TOPUP_SUCCESS_URL": f"{self.api_url}/topup?status=success",
                "TOPUP_CANCEL_URL": f"{self.api_url}/topup?status=cancelled",
            },
        )
        self.say(f"Fake Stripe  {stripe_base}")

        kiosk_bin = self._python_bin("festival-kiosk")
        for kiosk in self.kiosks:
            state_dir = self.root / "kiosks" / kiosk.kiosk_id
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            kiosk_key_file, _ = key(kiosk.kiosk_id)
            kiosk.process = self._child(
                kiosk.kiosk_id,
                [kiosk_bin, "run"],
                {
                    **base_env,
                    "KIOSK_ID": kiosk.kiosk_id,
                    "KIOSK_KEY_FILE": str(kiosk_key_file),
                    "CLOUD_PUBLIC_KEY": cloud_public_key,
                    "MQTT_URL": self.broker.url(kiosk.kiosk_id),
                    "KIOSK_STATE_DIR": str(state_dir),
                    "KIOSK_MODE": kiosk.role,
                    "KIOSK_READER": "sim",
                    "KIOSK_GPIO": "fake",
                    "KIOSK_HTTP_PORT": str(kiosk.http_port),
                    "FESTIVAL_TOPIC_PREFIX": TOPIC_PREFIX,
                },
            )

        wait_for(lambda: _http_ok(f"{self.api_url}/readyz"), f"the API (log: {api.log_file})")
        for kiosk in self.kiosks:
            wait_for(
                lambda kiosk=kiosk: bool(kiosk.state().get("online")),  # type: ignore[misc]
                f"kiosk {kiosk.kiosk_id} (log: {kiosk.process.log_file if kiosk.process else ''})",
            )
        consumer = self.children[0]
        if not consumer.alive():
            raise DemoError(f"the consumer exited:\n{consumer.tail()}")
        for kiosk in self.kiosks:
            self.say(f"Kiosk        {kiosk.kiosk_id:14} touchscreen {kiosk.base_url}/")
        self.assign_menu(demo_menu(), "demo-menu.json")
        bars = ", ".join(k.kiosk_id for k in self.kiosks if k.role == "bar")
        self.say(f"Menu         {DEMO_MENU_ID} at {bars} ({self._versions_text()})")
        self.cards = card_uids(self.card_count)
        if self.card_auth == "sun":
            self._program_the_wristbands(keys)
        self.say("")
        self.say(f"Dashboard    {self.api_url}/dashboard")
        self.say(f"Admin token  {self.admin_token}")
        self.say(f"Top-up page  {self.api_url}/topup")
        self.say(f"Portal       {self.api_url}/portal  ({self.portal_login(self.portal_attendee)})")
        self.say(f"Logs         {self.root / 'logs'}")
        self.say("")

    def _card_master_key(self, keys: Path) -> Path:
        """The deployment's card master key (`card master-keygen`): kept with the demo's data,
        0600, so the bands programmed in a run stay genuine for the next one's cloud."""
        from cloud.keys import generate_card_master_key, save_card_master_key

        path = keys / "card-master.key"
        if not path.exists():
            save_card_master_key(generate_card_master_key(), path)
        return path

    def _program_the_wristbands(self, keys: Path) -> None:
        """(1.1, issue 15 §5) Every attendee's band is a virtual NTAG 424 DNA, programmed at
        start as `festival-cloud card program` programs each band on its reader."""
        from cloud.database import make_engine
        from cloud.keys import load_card_master_key

        engine = make_engine(self.owner_url, pool_size=1, application_name="festival-demo")
        try:
            with engine.connect() as connection:
                rows = connection.exec_driver_sql(
                    "SELECT card_uid, counter_max FROM card_sun_counters"
                ).all()
        finally:
            engine.dispose()
        accepted = {str(uid): int(counter) for uid, counter in rows}
        started_s = time.monotonic()
        self.wristbands = DemoWristbands(sys.executable)
        self.wristbands.program(
            self.cards, load_card_master_key(keys / "card-master.key"), self.api_url, accepted
        )
        for kiosk in self.kiosks:
            kiosk.wristbands = self.wristbands
        self.say(
            f"Wristbands   {len(self.cards)} genuine NTAG 424 DNA (virtual), programmed as"
            f" `card program` does in {time.monotonic() - started_s:.1f} s;"
            " FESTIVAL_CARD_AUTH=sun: every tap's SUN message is checked"
        )

    def _operator(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`festival-cloud ARGS…` as the operator runs it (the owner's database URL)."""
        return subprocess.run(
            [self._python_bin("festival-cloud"), *args],
            env=self.cli_env,
            capture_output=True,
            text=True,
            timeout=DEMO_READY_TIMEOUT_S,
            check=False,
        )

    def portal_login(self, card_uid: str) -> str:
        """`festival-cloud card pin UID`, as the info desk runs it for a band printed on site:
        the attendee's portal login of one simulated attendee (issue 16)."""
        done = self._operator("card", "pin", card_uid)
        if done.returncode != 0:
            raise DemoError(f"card pin failed: {done.stderr.strip() or done.stdout.strip()}")
        self.portal_pin = done.stdout.strip()
        return f"wristband {card_uid}, PIN {self.portal_pin}"

    # --- the central menu (1.1) ------------------------------------------------------------------

    def assign_menu(self, menu: dict[str, Any], file_name: str) -> float:
        """`festival-cloud menu set FILE --role bar`, as an operator runs it; then wait until
        every bar kiosk runs the new config and sells from it. Returns how long the kiosks took
        after the command returned."""
        path = self.root / file_name
        path.write_text(json.dumps(menu, indent=2) + "\n")
        done = subprocess.run(
            [self._python_bin("festival-cloud"), "menu", "set", str(path), "--role", "bar"],
            env=self.cli_env,
            capture_output=True,
            text=True,
            timeout=DEMO_READY_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise DemoError(f"menu set failed: {done.stderr.strip() or done.stdout.strip()}")
        returned = time.monotonic()
        versions: dict[str, int] = {}
        for line in done.stdout.splitlines():
            words = line.split()
            # "config v3 published to bar-1", or "stored, not published now …: bar-1 v3, …"
            if line.startswith("config v") and len(words) == 5:
                versions[words[4]] = int(words[1][1:])
        for line in done.stdout.splitlines():
            if line.startswith("stored, not published now"):
                for pair in line.split(": ", 1)[1].split(";")[0].split(", "):
                    kiosk_id, _, version = pair.partition(" v")
                    if version.isdigit():
                        versions[kiosk_id] = int(version)
        self.menu_versions = versions
        for kiosk in self.kiosks:
            expected = versions.get(kiosk.kiosk_id)
            if expected is None:
                continue
            wait_for(
                lambda kiosk=kiosk, expected=expected: (  # type: ignore[misc]
                    ((kiosk.state().get("config") or {}).get("version") or 0) >= expected
                ),
                f"kiosk {kiosk.kiosk_id} to run config v{expected}",
            )
        return time.monotonic() - returned

    def _versions_text(self) -> str:
        versions = sorted(set(self.menu_versions.values()))
        return "config " + "/".join(f"v{version}" for version in versions)

    def _change_a_price(self, after_s: float) -> None:
        """Part-way through, the operator changes one price at every bar."""
        try:
            if self.stop.wait(after_s):
                return
            try:
                took_s = self.assign_menu(
                    demo_menu({DEMO_REPRICED_SKU: DEMO_REPRICED_CENTS}), "demo-menu-repriced.json"
                )
            except (DemoError, OSError, subprocess.SubprocessError) as error:
                self.tally.error(f"price change: {error}")
                return
            bars = ", ".join(k.kiosk_id for k in self.kiosks if k.role == "bar")
            price = _eur(DEMO_REPRICED_CENTS)
            self.say(
                f"menu: {DEMO_REPRICED_SKU} now {price} at {bars} ({self._versions_text()});"
                f" the kiosks applied it {took_s:.2f} s after menu set returned"
            )
        finally:
            self.repriced.set()  # its line printed first, then the bar's cut-off

    def _cut_a_bar_off(self, after_s: float, for_s: float) -> None:
        """(1.1) The Wi-Fi of one bar fails: the broker refuses its login and kicks its session
        (a real disconnect), the bar sells offline within its config's policy, and when the
        login is accepted again its backlog drains, each sale applied once."""
        if self.stop.wait(after_s):
            return
        # After the price change, however long `menu set` takes: with --duration 14 the two are
        # 0.9 s apart, and that CLI process (database, broker) can take longer on a loaded
        # machine; a bar cut off before its new config arrived would take it only once back
        # (CI saw "applied it 6.35 s after").
        while not self.repriced.wait(0.1):
            if self.stop.is_set():
                return
        bar = next(k for k in self.kiosks if k.role == "bar")
        assert self.broker is not None
        debt_sale = False
        try:
            before = self._card(self.debtor)
            have_cents = before.balance_cents if before else 0
            if have_cents < DEMO_DEBTOR_START_CENTS:
                self._checkpoint_topup(self.debtor, DEMO_DEBTOR_START_CENTS - have_cents)
        except (DemoError, OSError, ValueError) as error:
            self.tally.error(f"debt story: {error}")
        admin = self.broker.admin()
        try:
            admin.disable_client(bar.kiosk_id)
            self.say(
                f"network: {bar.kiosk_id} cut off the broker for {for_s:.0f} s (its login"
                " refused, its session kicked); it keeps selling offline"
            )
            debt_sale = self._offline_debt_sale(bar)
            self.stop.wait(for_s)
        finally:
            admin.enable_client(bar.kiosk_id)
        back_s = time.monotonic()
        try:
            pending = int(bar.state()["offline"]["pending"])
            wait_for(
                lambda: bool(bar.state().get("online")) and bar.state()["outbox"]["pending"] == 0,
                f"{bar.kiosk_id} to reconnect and drain its backlog",
            )
        except (DemoError, OSError, KeyError, TypeError, ValueError) as error:
            self.tally.error(f"offline drain: {error}")
            return
        self.say(
            f"network: {bar.kiosk_id} back; its {pending} offline sales were sent and applied"
            f" {time.monotonic() - back_s:.1f} s after the broker took it back"
        )
        if debt_sale:
            self._pay_the_debt(bar)

    def _offline_debt_sale(self, bar: DemoKiosk) -> bool:
        """While ``bar`` is offline, the debtor buys more than their balance: approved offline."""
        try:
            wait_for(lambda: not bar.state().get("online"), f"{bar.kiosk_id} to notice", 15.0)
            card = self._card(self.debtor)
            shots = (card.balance_cents if card else 0) // DEMO_DEBT_SKU_CENTS + 1
            entry = {
                "items": [{"sku": DEMO_DEBT_SKU, "quantity": shots}],
                "staff_id": "ben",
            }
            outcome = bar.transact(entry, self.debtor)
        except (DemoError, OSError, ValueError) as error:
            self.tally.error(f"debt story: {error}")
            return False
        if outcome is None or not outcome.get("offline"):
            self.tally.error(f"debt story: the offline sale was not approved offline: {outcome}")
            return False
        self.tally.record("bar", outcome, int(outcome.get("amount_cents") or 0))
        return True

    def _pay_the_debt(self, bar: DemoKiosk) -> None:
        """After the drain the debtor owes the shortfall; a checkpoint top-up pays it first."""
        try:
            owed = self._card(self.debtor)
            if owed is None or owed.debt_cents <= 0:
                self.tally.error(f"debt story: no debt after the drain: {owed}")
                return
            self.say(
                f"debt: attendee {self.debtor} owes {_eur(owed.debt_cents)} after"
                f" {bar.kiosk_id}'s offline sales"
            )
            outcome = self._checkpoint_topup(self.debtor, DEMO_DEBT_TOPUP_CENTS)
            after = self._card(self.debtor)
        except (DemoError, OSError, ValueError) as error:
            self.tally.error(f"debt story: {error}")
            return
        expected = DEMO_DEBT_TOPUP_CENTS - owed.debt_cents
        if (
            not outcome
            or not outcome.get("approved")
            or after is None
            or (after.debt_cents != 0 or after.balance_cents != expected)
        ):
            self.tally.error(f"debt story: top-up {outcome}, card after it {after}")
            return
        self.say(
            f"debt: top-up {_eur(DEMO_DEBT_TOPUP_CENTS)}: {_eur(owed.debt_cents)} paid the debt,"
            f" balance {_eur(after.balance_cents)}"
        )
        with self.tally.lock:
            self.tally.debt_paid = True

    # --- traffic -------------------------------------------------------------------------------

    def _admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def known_cards(self) -> list[str]:
        """Every wristband but each 25th and the last, which nobody tops up (CARD_NOT_FOUND)."""
        last = len(self.cards) - 1
        return [uid for n, uid in enumerate(self.cards) if n % 25 != 24 and n not in (1, last)]

    @property
    def portal_attendee(self) -> str:
        """The attendee whose portal login the demo prints, and who asks for a payout there at
        the end (not the band reported lost: that one is the first)."""
        known = self.known_cards()
        return known[1] if len(known) > 1 else self.cards[0]

    @property
    def debtor(self) -> str:
        """The attendee of the debt story (issue 14 §3), outside the random traffic."""
        return self.cards[1]

    def _card(self, card_uid: str) -> Any:
        from cloud.database import make_engine
        from cloud.ledger import Ledger

        engine = make_engine(self.owner_url, pool_size=1, application_name="festival-demo")
        try:
            return Ledger(engine).card(card_uid)
        finally:
            engine.dispose()

    def _checkpoint_topup(self, card_uid: str, amount_cents: int) -> dict[str, Any] | None:
        checkpoint = next(k for k in self.kiosks if k.role == "checkpoint")
        entry = {"amount_cents": amount_cents, "payment_method": "cash", "staff_id": "anna"}
        outcome = checkpoint.transact(entry, card_uid)
        self.tally.record("checkpoint", outcome, amount_cents)
        return outcome

    def _pay(self, kiosk: DemoKiosk, generator: random.Random, card: str) -> None:
        if kiosk.role == "checkpoint":
            entry, amount_cents = recharge(generator)
        else:
            entry, amount_cents = bar_order(generator)
        try:
            outcome = kiosk.transact(entry, card)
        except (DemoError, OSError, ValueError) as error:
            self.tally.error(f"{kiosk.kiosk_id}: {error}")
            self.stop.wait(1.0)
            return
        if outcome is not None and kiosk.role == "bar":
            amount_cents = int(outcome.get("amount_cents") or 0)
        self.tally.record(kiosk.role, outcome, amount_cents)

    def _open_the_gates(self, kiosk: DemoKiosk, index: int, checkpoints: int) -> None:
        """Top-ups first: the checkpoints load every known wristband once, as fast as they can."""
        generator = random.Random(index)
        for card in self.known_cards()[index::checkpoints]:
            if self.stop.is_set():
                return
            self._pay(kiosk, generator, card)

    def _kiosk_worker(self, kiosk: DemoKiosk, index: int, pace_s: float) -> None:
        generator = random.Random(index * 7919 + int(time.time()))
        known = self.known_cards()
        unknown = sorted(set(self.cards) - set(known) - {self.debtor}) or known
        next_s = time.monotonic()
        first = True
        while not self.stop.is_set():
            # Someone who never topped up is first in line at each bar; later, now and then.
            if kiosk.role == "bar" and (first or generator.random() < UNKNOWN_CARD_SHARE):
                card = generator.choice(unknown)
            else:
                card = generator.choice(known)
            first = False
            self._pay(kiosk, generator, card)
            next_s = max(next_s + pace_s, time.monotonic() - 1.0)
            self.stop.wait(max(0.0, next_s - time.monotonic()))

    def _online_topups(self) -> None:
        """Attendees paying on the top-up page now and then."""
        generator = random.Random()
        while not self.stop.wait(ONLINE_TOPUP_INTERVAL_S):
            card = generator.choice([uid for uid in self.cards if uid != self.debtor])
            try:
                self._online_topup(card, generator.choice(TOPUP_AMOUNTS_CENTS))
            except (DemoError, OSError, ValueError, KeyError) as error:
                self.tally.error(f"online top-up: {error}")

    def _online_topup(self, card: str, amount_cents: int) -> None:
        """One attendee paying on the top-up page: Checkout Session, payment, signed webhook."""
        from cloud.stripe_fake import checkout_session_completed_event, deliver_event

        status, reply = http_json(
            "POST",
            f"{self.api_url}/api/topups/checkout",
            {"card_uid": card, "amount_cents": amount_cents},
        )
        if status != 201 or not isinstance(reply, dict):
            raise DemoError(f"checkout answered {status}: {reply}")
        session = self.stripe.complete_session(reply["session_id"])
        status, body = deliver_event(
            f"{self.api_url}/stripe/webhook",
            checkout_session_completed_event(session),
            self.webhook_secret,
        )
        if status != 200:
            raise DemoError(f"webhook answered {status}: {body[:200]!r}")
        with self.tally.lock:
            self.tally.online_topups += 1
            self.tally.online_topups_cents += amount_cents

    def _block_a_lost_wristband(self) -> None:
        """An attendee reports a lost wristband: its later orders are declined CARD_BLOCKED."""
        if self.stop.wait(10.0):
            return
        for uid in self.cards[:BLOCKED_CARD_COUNT]:
            status, _ = http_json(
                "POST", f"{self.api_url}/api/cards/{uid}/block", {}, self._admin()
            )
            if status == 200:
                self.say(f"(operator blocked wristband {uid}: reported lost)")

    def try_the_known_attacks(self) -> None:
        """What a dishonest bartender, a stolen kiosk password and a stranger on the internet try
        first (issue 11, docs/security.md), each shown refused; one that is not refused is an
        error of the run (the demo then exits non-zero)."""
        bars = [kiosk for kiosk in self.kiosks if kiosk.role == "bar"]
        if bars:
            # 99 cups "brought back" (+198.00) from the bar's normal screen.
            entry = {
                "items": [],
                "returns": [{"sku": DEMO_RETURN_SKU, "quantity": 99}],
                "staff_id": "mallory",
            }
            with bars[0].lock:
                status, reply = http_json("POST", f"{bars[0].base_url}/api/order", entry)
                http_json("POST", f"{bars[0].base_url}/api/dismiss", {})
            self._refused(
                status == 400, f"{bars[0].kiosk_id}: 99 returned cups refused by the kiosk", reply
            )
        if bars and self.wristbands is not None:
            self._a_copied_uid(bars[0])
        self._refused(
            self._shared_subscription_refused(SPARE_KIOSK_ID),
            f"the MQTT password of kiosk {SPARE_KIOSK_ID} (a spare Pi's SD card) cannot join the "
            "consumers' $share subscription (SUBACK Not authorized)",
            None,
        )
        # The checkout says nothing about a card: the same 201 for a fortune and for any card.
        status, reply = http_json(
            "POST",
            f"{self.api_url}/api/topups/checkout",
            {"card_uid": self.cards[0], "amount_cents": 100_000},
        )
        self._refused(status == 201, "the online checkout reveals no balance (201)", reply)

    def _a_copied_uid(self, bar: DemoKiosk) -> None:
        """(1.1) Someone copied an attendee's UID onto a UID-only card (any phone prints the
        UID): at a bar the copy buys nothing, CARD_NOT_GENUINE; the attendee's own band,
        tapped next, still pays."""
        victim = self.known_cards()[-1]
        entry = {"items": [{"sku": DEMO_DEBT_SKU, "quantity": 1}], "staff_id": "ben"}
        try:
            copy = bar.transact(entry, victim, genuine=False)
            real = bar.transact(entry, victim)
        except (DemoError, OSError, ValueError) as error:
            self.tally.error(f"copied UID: {error}")
            return
        self.tally.record("bar", copy, 0)
        self.tally.record("bar", real, int((real or {}).get("amount_cents") or 0))
        refused = (copy or {}).get("error_code") == "CARD_NOT_GENUINE"
        self._refused(
            refused and bool((real or {}).get("approved")),
            f"a copy of wristband {victim}'s UID on a UID-only card at {bar.kiosk_id}:"
            " CARD_NOT_GENUINE; the attendee's own band then paid",
            {"copy": copy, "real": real},
        )
        if refused:
            with self.tally.lock:
                self.tally.clone_refused = True

    def _refused(self, refused: bool, what: str, reply: object) -> None:
        if refused:
            self.say(f"(attack refused: {what})")
        else:
            self.tally.error(f"NOT refused: {what}: {reply!r}"[:300])

    def _shared_subscription_refused(self, kiosk_id: str) -> bool:
        from cloud.consumer.mqtt_link import short_session
        from protocol.mqtt_url import parse_mqtt_url

        assert self.broker is not None
        seen = short_session(
            parse_mqtt_url(self.broker.url(kiosk_id)),
            client_id=kiosk_id,
            timeout_s=5.0,
            subscribe=f"$share/ledger/{TOPIC_PREFIX}/v1/kiosks/+/tx",
        )
        codes = seen.subscribe_codes
        return bool(codes) and all(code >= 0x80 for code in codes)

    def run_traffic(self, duration_s: float | None) -> None:
        bars = [k for k in self.kiosks if k.role == "bar"]
        pace_s = len(self.kiosks) / max(self.rate_per_s, 0.01)
        threads = [
            threading.Thread(target=self._kiosk_worker, args=(kiosk, i, pace_s), daemon=True)
            for i, kiosk in enumerate(self.kiosks)
        ]
        threads.append(threading.Thread(target=self._online_topups, daemon=True))
        threads.append(threading.Thread(target=self._block_a_lost_wristband, daemon=True))
        reprice_after_s = DEMO_REPRICE_AFTER_S if duration_s is None else duration_s / 3
        threads.append(
            threading.Thread(target=self._change_a_price, args=(reprice_after_s,), daemon=True)
        )
        if duration_s is None:
            cut_after_s, cut_for_s = DEMO_OFFLINE_AFTER_S, DEMO_OFFLINE_FOR_S
        else:
            # After the price change (at a third), so every bar runs the new menu first.
            cut_after_s, cut_for_s = duration_s * 0.4, min(DEMO_OFFLINE_FOR_S, duration_s * 0.4)
        threads.append(
            threading.Thread(target=self._cut_a_bar_off, args=(cut_after_s, cut_for_s), daemon=True)
        )
        self.say(
            f"Simulating attendees at {len(bars)} bars and {len(self.kiosks) - len(bars)} "
            f"checkpoints, about {self.rate_per_s:g} payments/s over {len(self.cards)} wristbands."
            + (" Ctrl-C to stop." if duration_s is None else f" Running {duration_s:g} s.")
        )
        checkpoints = [k for k in self.kiosks if k.role == "checkpoint"]
        self.say(f"Opening the gates: topping up {len(self.known_cards())} wristbands first.")
        self.tally.started_s = time.monotonic()
        opening = [
            threading.Thread(
                target=self._open_the_gates, args=(kiosk, i, len(checkpoints)), daemon=True
            )
            for i, kiosk in enumerate(checkpoints)
        ]
        for thread in opening:
            thread.start()
        for thread in opening:
            thread.join()
        self.say(self.tally.line())
        self.try_the_known_attacks()
        for thread in threads:
            thread.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not self.stop.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            self.stop.wait(
                PROGRESS_INTERVAL_S if remaining is None else min(PROGRESS_INTERVAL_S, remaining)
            )
            self.say(self.tally.line())
            for child in self.children:
                if not child.alive():
                    self.tally.error(f"{child.name} exited; log: {child.log_file}")
                    self.stop.set()
        self.stop.set()
        for thread in threads:
            thread.join(timeout=DEMO_RESULT_TIMEOUT_S + 5)

    # --- the end -------------------------------------------------------------------------------

    def wait_for_quiet(self) -> None:
        """Let the kiosks' outboxes drain so the summary counts settled money."""
        deadline = time.monotonic() + DEMO_RESULT_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if all(k.state()["outbox"]["pending"] == 0 for k in self.kiosks):
                    return
            except (DemoError, OSError, KeyError, TypeError):
                return
            time.sleep(0.1)

    # --- at the counter (1.1, issue 17) --------------------------------------------------------

    def at_the_counter(self) -> None:
        """The info desk replaces the band reported lost (`card swap`: its money follows the new
        band, which then pays at a bar), and a checkpoint's cashier ends the shift (`shift
        close`: the drawer counted 0.50 short, the variance booked)."""
        try:
            self._log_the_staff_in()
            self._void_an_order()
            self._swap_the_lost_band()
            self._cash_out_a_band()
            self._close_a_shift()
        except (DemoError, OSError, ValueError, KeyError) as error:
            self.tally.error(f"at the counter: {error}")

    def _log_the_staff_in(self) -> None:
        """(revision 0024) The festival registers its staff (`staff add`: a band and a fresh PIN
        each; a second run gives them a new PIN with `staff pin`); Anna, a supervisor, logs in
        at the first checkpoint and Ben, a bartender, at the first bar with their band and PIN
        (`festival-kiosk staff-login`, the PIN on stdin): the cloud checks both, the kiosk page
        shows who is at the till and names them in every request."""
        places = {
            "anna": next(k for k in self.kiosks if k.role == "checkpoint"),
            "ben": next(k for k in self.kiosks if k.role == "bar"),
        }
        for staff_id, (name, role, band) in DEMO_STAFF.items():
            done = self._operator(
                "staff", "add", staff_id, "--name", name, "--role", role, "--card", band, "--json"
            )
            if done.returncode == 1 and "exists already" in done.stderr:
                done = self._operator("staff", "pin", staff_id, "--json")
            if done.returncode != 0:
                raise DemoError(f"staff add {staff_id}: {done.stderr.strip()}")
            pin = json.loads(done.stdout)["pin"]
            kiosk = places[staff_id]
            login = subprocess.run(
                [
                    self._python_bin("festival-kiosk"),
                    "staff-login",
                    "--port",
                    str(kiosk.http_port),
                    "--staff-id",
                    staff_id,
                    "--band",
                    band,
                ],
                input=pin + "\n",
                capture_output=True,
                text=True,
                timeout=DEMO_READY_TIMEOUT_S,
                check=False,
            )
            if login.returncode != 0:
                raise DemoError(f"staff login {staff_id}: {login.stderr.strip()}")
            self.say(f"staff: {name} ({role}) logged in at {kiosk.kiosk_id} with band and PIN")
            with self.tally.lock:
                self.tally.staff_logged_in.append(f"{staff_id} at {kiosk.kiosk_id}")

    def _cash_out_a_band(self) -> None:
        """An attendee leaving early asks for their money in cash at the checkpoint (`card
        cash-out`): the part their online top-ups can take back is refunded there, the rest
        paid from the drawer, and the band blocked."""
        checkpoint = next(k for k in self.kiosks if k.role == "checkpoint").kiosk_id
        taken = {self.debtor, self.portal_attendee, self.cards[0]}
        candidates = [uid for uid in reversed(self.known_cards()) if uid not in taken]
        uid = next(
            (
                uid
                for uid in candidates[:50]
                if self._owner_scalar(
                    "SELECT count(*) FROM cards WHERE card_uid = %(u)s AND status = 'active'"
                    " AND balance_cents > 0 AND debt_cents = 0",
                    u=uid,
                )
            ),
            None,
        )
        if uid is None:
            raise DemoError("cash-out: no band with money left to cash out")
        done = self._operator(
            "card", "cash-out", uid, "--checkpoint", checkpoint, "--staff", "anna", "--json"
        )
        if done.returncode != 0:
            raise DemoError(f"cash-out: {done.stderr.strip() or done.stdout.strip()}")
        paid = json.loads(done.stdout)
        self.say(
            f"cash-out: {uid} cashed out at {checkpoint} by anna: {paid['message']}"
            f" ({_eur(paid['cash_cents'])} from the drawer)"
        )
        with self.tally.lock:
            self.tally.cashed_out = uid

    def _void_an_order(self) -> None:
        """A bartender hit the wrong button: "Cancel" on the kiosk page's newest order (POST
        /api/void); the kiosk signs a `void`, the cloud gives the whole amount back."""
        bar = next(k for k in self.kiosks if k.role == "bar")
        with bar.lock:
            recent = (bar.state().get("orders") or {}).get("recent") or []
            order = next(
                (o for o in reversed(recent) if o.get("void") is None and not o.get("offline")),
                None,
            )
            if order is None:
                raise DemoError(f"{bar.kiosk_id} lists no order to cancel")
            status, reply = http_json(
                "POST",
                f"{bar.base_url}/api/void",
                {"request_id": order["request_id"], "staff_id": "ben"},
            )
            if status != 200:
                raise DemoError(f"{bar.kiosk_id}/api/void answered {status}: {reply}")

            def voided() -> bool:
                listed = (bar.state().get("orders") or {}).get("recent") or []
                return any(
                    o.get("request_id") == order["request_id"] and o.get("void") == "voided"
                    for o in listed
                )

            wait_for(voided, f"{bar.kiosk_id}'s void", DEMO_RESULT_TIMEOUT_S)
            http_json("POST", f"{bar.base_url}/api/dismiss", {})
        self.say(
            f"void: {bar.kiosk_id} cancelled a mistaken order of"
            f" {_eur(int(order['amount_cents']))} from its page; the money is back on the band"
        )
        with self.tally.lock:
            self.tally.voided = True

    def _swap_the_lost_band(self) -> None:
        old = self.cards[0]  # reported lost during the run (_block_a_lost_wristband)
        new = card_uids(self.card_count + 1)[-1]  # a spare band from the same box
        if self._owner_scalar("SELECT replaced_by FROM cards WHERE card_uid = %(u)s", u=old):
            self.say(f"swap: wristband {old} was replaced in an earlier run")
            return
        if self.wristbands is not None:
            self.wristbands.program([new], self._master_key(), self.api_url)
        done = self._operator("card", "swap", old, new, "--json")
        if done.returncode != 0:
            raise DemoError(f"card swap: {done.stderr.strip() or done.stdout.strip()}")
        swapped = json.loads(done.stdout)
        self.say(
            f"swap: the info desk moved lost wristband {old}'s {_eur(swapped['balance_cents'])}"
            f" to a new band {new}; the old one stays blocked (replaced by {new})"
        )
        bar = next(k for k in self.kiosks if k.role == "bar")
        entry = {"items": [{"sku": DEMO_DEBT_SKU, "quantity": 1}], "staff_id": "ben"}
        outcome = bar.transact(entry, new)
        self.tally.record("bar", outcome, int((outcome or {}).get("amount_cents") or 0))
        if not outcome or not outcome.get("approved"):
            raise DemoError(f"the new band did not pay at {bar.kiosk_id}: {outcome}")
        self.say(f"swap: the new band paid at {bar.kiosk_id}")
        with self.tally.lock:
            self.tally.swapped = True

    def _master_key(self) -> bytes:
        from cloud.keys import load_card_master_key

        return load_card_master_key(self.root / "keys" / "card-master.key")

    def _close_a_shift(self) -> None:
        checkpoint = next(k for k in self.kiosks if k.role == "checkpoint").kiosk_id
        expected = self._drawer_expected(checkpoint)
        counted = max(0, expected - DEMO_SHIFT_SHORT_CENTS)
        done = self._operator(
            "shift", "close", checkpoint, f"--counted-cents={counted}", "--by", "anna", "--json"
        )
        if done.returncode != 0:
            raise DemoError(f"shift close: {done.stderr.strip() or done.stdout.strip()}")
        closed = json.loads(done.stdout)
        self.say(
            f"shift: {checkpoint}'s cash drawer counted {_eur(closed['counted_cents'])}, expected"
            f" {_eur(closed['expected_cents'])}: variance {_eur(closed['variance_cents'])}"
            " booked to variance:cash"
        )
        with self.tally.lock:
            self.tally.shift_closed = True

    def _drawer_expected(self, checkpoint: str) -> int:
        """What the cashier's count is compared with (the shift close computes it the same way:
        the cash account's movement since the last close)."""
        return int(
            self._owner_scalar(
                "SELECT coalesce((SELECT cash_total_after_cents FROM shift_closes"
                " WHERE checkpoint_id = %(c)s ORDER BY shift_no DESC LIMIT 1), 0)"
                " - coalesce((SELECT sum(p.amount_cents) FROM postings p"
                " JOIN accounts a USING (account_id) WHERE a.name = 'cash:' || %(c)s), 0)",
                c=checkpoint,
            )
        )

    def _owner_scalar(self, sql: str, **params: object) -> Any:
        from cloud.database import make_engine

        engine = make_engine(self.owner_url, pool_size=1, application_name="festival-demo")
        try:
            with engine.connect() as connection:
                return connection.exec_driver_sql(sql, params).scalar()
        finally:
            engine.dispose()

    def request_payouts(self, count: int = DEMO_PAYOUTS) -> None:
        """After the festival (issue 16 §2): a few attendees ask for what is left on their band.
        The first, who also topped up online, asks on the portal (login with the band's PIN,
        `POST /api/portal/payout`), the others through the same procedure directly; the ledger
        splits each (Stripe top-ups first, then the bank) and blocks the band, and the API's
        refund runner refunds the Stripe parts through (the fake) Stripe's refunds API."""
        from cloud.database import make_engine
        from cloud.payouts import DEMO_IBAN, demo_payouts

        first = self.portal_attendee
        outcomes: list[dict[str, Any]] = []
        asked_s = time.monotonic()
        try:
            self._online_topup(first, DEMO_PAYOUT_TOPUP_CENTS)
            outcomes.append(self._portal_payout(first, DEMO_IBAN))
        except (DemoError, OSError, ValueError, KeyError) as error:
            self.tally.error(f"payouts: the portal's payout: {error}")
        candidates = [
            uid
            for uid in self.known_cards()
            if uid not in (self.debtor, first, self.tally.cashed_out)
        ]
        engine = make_engine(self.owner_url, pool_size=1, application_name="festival-demo")
        try:
            outcomes += demo_payouts(engine, candidates, limit=count - len(outcomes))
        except Exception as error:  # the demo goes on to its summary and ledger check
            self.tally.error(f"payouts: {error}")
            return
        finally:
            engine.dispose()
        for outcome in outcomes:
            self.say(
                f"payout: {_eur(outcome['amount_cents'])} back to an attendee"
                f" (bank transfer {_eur(outcome['bank_transfer_cents'])},"
                f" Stripe refund {_eur(outcome['stripe_refund_cents'])}); band blocked"
            )
        self.tally.payouts = len(outcomes)
        if not outcomes:
            self.tally.error("payouts: no attendee had a balance to pay out")
        self._wait_for_the_stripe_refunds(
            [str(outcome["payout_id"]) for outcome in outcomes], asked_s
        )
        self._pay_the_bank_transfers()

    def _pay_the_bank_transfers(self) -> None:
        """`payout export` writes the SEPA file of the pending bank transfers under the demo's
        folder (the operator uploads it to the bank); `payout mark-paid` once the bank ran it."""
        folder = self.root / "payouts"
        folder.mkdir(exist_ok=True)
        sepa = folder / f"sepa-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.xml"
        exported = self._operator("payout", "export", "--out", str(sepa))
        if exported.returncode != 0:
            self.tally.error(f"payout export: {exported.stderr.strip() or exported.stdout}")
            return
        if not sepa.exists():
            self.say(f"payout: {exported.stdout.strip()}")
            return
        paid = self._operator("payout", "mark-paid", "--file", str(sepa))
        if paid.returncode != 0:
            self.tally.error(f"payout mark-paid: {paid.stderr.strip() or paid.stdout}")
            return
        count = exported.stdout.split(" bank transfer")[0].split()[-1]
        self.say(
            f"payout: SEPA file {sepa} (pain.001.001.03, {count} bank transfers) written by"
            " `payout export`; `payout mark-paid` once the bank ran it"
        )
        with self.tally.lock:
            self.tally.sepa_file = str(sepa)

    def _portal_payout(self, card_uid: str, iban: str) -> dict[str, Any]:
        """What the attendee does on the phone: log in with the band's PIN, ask for the money."""
        import http.cookiejar

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

        def post(path: str, body: dict[str, Any]) -> tuple[int, Any]:
            request = urllib.request.Request(  # noqa: S310 (loopback)
                self.api_url + path,
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json", "X-Festival-Portal": "1"},
            )
            try:
                with opener.open(request, timeout=DEMO_HTTP_TIMEOUT_S) as response:
                    return int(response.status), json.loads(response.read() or b"null")
            except urllib.error.HTTPError as error:
                return int(error.code), error.read().decode(errors="replace")[:200]

        status, reply = post("/api/portal/login", {"card_uid": card_uid, "pin": self.portal_pin})
        if status != 200:
            raise DemoError(f"portal login answered {status}: {reply}")
        status, reply = post(
            "/api/portal/payout", {"iban": iban, "account_holder": f"Demo attendee {card_uid}"}
        )
        if status != 201 or not isinstance(reply, dict):
            raise DemoError(f"portal payout answered {status}: {reply}")
        self.say(
            f"portal: attendee {card_uid} logged in with the band's PIN and asked for a payout"
        )
        return reply

    def _wait_for_the_stripe_refunds(self, payout_ids: list[str], asked_s: float) -> None:
        """The Stripe parts of these payout requests (their payout_id is the request's id)
        refunded by the API's runner."""
        from cloud.database import make_engine

        if not payout_ids:
            return
        engine = make_engine(self.owner_url, pool_size=1, application_name="festival-demo")
        query = (
            "SELECT count(*) FILTER (WHERE state = 'paid'), count(*),"
            " coalesce(sum(amount_cents) FILTER (WHERE state = 'paid'), 0)"
            " FROM payouts WHERE kind = 'stripe' AND request_id = ANY(CAST(%(ids)s AS uuid[]))"
        )

        def counts() -> tuple[int, int, int]:
            with engine.connect() as connection:
                row = connection.exec_driver_sql(query, {"ids": payout_ids}).one()
            return int(row[0]), int(row[1]), int(row[2])

        try:
            wait_for(lambda: _all_paid(counts()), "the Stripe refunds", DEMO_REFUND_TIMEOUT_S)
            paid, parts, cents = counts()
        except (DemoError, OSError, ValueError) as error:
            self.tally.error(f"payouts: Stripe refunds: {error}")
            return
        finally:
            engine.dispose()
        if parts:
            self.say(
                f"payout: {parts} Stripe refunds ({_eur(cents)}) made through Stripe's refunds API"
                f" within {time.monotonic() - asked_s:.1f} s of the first request"
            )
            with self.tally.lock:
                self.tally.stripe_refunds = paid

    def ledger_check(self) -> list[str]:
        from cloud.database import make_engine
        from cloud.ledger import Ledger

        engine = make_engine(self.owner_url, pool_size=1, application_name="festival-demo")
        try:
            return Ledger(engine).check()
        finally:
            engine.dispose()

    def summary(self, violations: list[str]) -> None:
        self.say("")
        self.say("Summary")
        self.say("  " + self.tally.line().strip())
        for code, count in sorted(self.tally.outcomes.items()):
            self.say(f"  {code:24} {count}")
        for error in self.tally.errors[:10]:
            self.say(f"  error: {error}")
        self._sales_per_product()
        shown = [
            f"offline ({self.tally.offline_approved} sales approved offline, drained)"
            if self.tally.offline_approved
            else "",
            "debt paid by a later top-up" if self.tally.debt_paid else "",
            f"payouts ({self.tally.payouts} attendees paid back, {self.tally.stripe_refunds}"
            " Stripe refunds)"
            if self.tally.payouts
            else "",
            "genuine wristbands (a copied UID refused)" if self.tally.clone_refused else "",
            "a SEPA file of the bank transfers" if self.tally.sepa_file else "",
            "an order voided" if self.tally.voided else "",
            "a lost band swapped" if self.tally.swapped else "",
            "a band cashed out" if self.tally.cashed_out else "",
            "a shift closed" if self.tally.shift_closed else "",
            "staff logged in (" + ", ".join(self.tally.staff_logged_in) + ")"
            if self.tally.staff_logged_in
            else "",
        ]
        self.say("  shown: " + (", ".join(text for text in shown if text) or "none"))
        if violations:
            self.say(f"  ledger check: FAILED ({len(violations)} violations)")
            for violation in violations[:20]:
                self.say(f"    {violation}")
        else:
            self.say(
                "  ledger check: passed (postings balance, cached balances exact, none negative)"
            )

    def _sales_per_product(self) -> None:
        """What cloud.reports gives per product and price (sales lines, net of voids): the
        repriced product shows a row for each price it was sold at."""
        from cloud.database import make_engine
        from cloud.reports import Reports, SalesGroup, SalesWindow

        engine = make_engine(self.owner_url, pool_size=1, application_name="festival-demo")
        try:
            rows = Reports(engine, currency="EUR").sales(SalesGroup.PRODUCT, SalesWindow())
        except Exception as error:  # the summary goes on without it
            self.say(f"  sales per product: unavailable ({error})")
            return
        finally:
            engine.dispose()
        self.say("  sales per product:")
        for row in rows:
            price = row.get("unit_price_cents")
            at = "" if price is None else f" at {_eur(int(price))}"
            self.say(
                f"    {row['sku']!s:12} {row['name']!s:18}{at} {row['quantity']:>6} x"
                f"  {row['amount']:>10} EUR"
            )

    def shutdown(self) -> None:
        for child in reversed(self.children):
            child.stop()
        if self.stripe is not None:
            self.stripe.stop()
        if self.wristbands is not None:
            self.wristbands.close()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="festival-demo",
        description="The whole festival cashless system on this machine, with simulated attendees.",
    )
    from cloud.cli import installed_version

    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after SECONDS, print a summary (default: until Ctrl-C)",
    )
    parser.add_argument("--kiosks", type=int, default=4, help="number of kiosks (default 4)")
    parser.add_argument("--cards", type=int, default=60, help="number of wristbands (default 60)")
    parser.add_argument(
        "--rate",
        type=float,
        default=8.0,
        metavar="PER_SECOND",
        help="payments per second offered over all kiosks (default 8)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the demo's data first")
    parser.add_argument(
        "--card-auth",
        choices=["sun", "uid"],
        default="sun",
        help="sun (default): genuine NTAG 424 DNA wristbands, every tap's SUN message checked; "
        "uid: a wristband is its UID",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.kiosks < 2 or args.kiosks > 40:
        print("festival-demo: --kiosks must be 2..40", file=sys.stderr)
        return 2
    if args.cards < 2 or args.cards > 100_000 or args.rate <= 0:
        print("festival-demo: --cards must be 2..100000 and --rate positive", file=sys.stderr)
        return 2
    if not os.environ.get("XDG_RUNTIME_DIR") or not Path(os.environ["XDG_RUNTIME_DIR"]).is_dir():
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="festival-xdg-")
    root = Path(os.environ.get("FESTIVAL_DEMO_DIR", DEMO_ROOT_DEFAULT)).resolve()
    if args.fresh and root.exists():
        shutil.rmtree(root)
    demo = Demo(root, args.kiosks, args.cards, args.rate, card_auth=args.card_auth)
    signal.signal(signal.SIGTERM, lambda *_: demo.stop.set())
    violations: list[str] = ["the demo did not run"]
    try:
        demo.start()
        demo.run_traffic(args.duration)
        demo.wait_for_quiet()
        demo.at_the_counter()
        demo.request_payouts()
        violations = demo.ledger_check()
        demo.summary(violations)
    except KeyboardInterrupt:
        demo.stop.set()
        demo.say("\nstopping…")
        try:
            demo.wait_for_quiet()
            violations = demo.ledger_check()
            demo.summary(violations)
        except Exception as error:  # the summary is best effort once the operator said stop
            demo.say(f"no summary: {error}")
    except DemoError as error:
        demo.say(f"festival-demo: {error}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not orphan children
        demo.shutdown()
        demo.say("Stopped everything this demo started.")
    return 0 if not violations else 1


if __name__ == "__main__":
    sys.exit(main())
