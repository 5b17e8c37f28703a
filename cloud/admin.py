"""`festival-cloud` verbs for the database, kiosks and cards (DESIGN.md "CLI").

Each handler is `handler(args, settings) -> exit code`; cloud/cli.py parses. Exit codes: 0 done,
1 the thing asked about is not there / the check found violations, 2 configuration or database
unavailable.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from cloud import database
from cloud.database import TransientDatabaseError, make_engine
from cloud.ledger import Ledger
from cloud.ledger_records import TOPUP_RETENTION_DAYS
from cloud.pos_devices import refuse_pos_device_id
from cloud.settings import CloudSettings
from protocol.limits import (
    CHECKPOINT_ID_LENGTH_MAX,
    STAFF_ID_LENGTH_MAX,
    TEXT_FORBIDDEN_PATTERN,
)
from protocol.models import is_valid_card_uid
from protocol.redaction import redact

if TYPE_CHECKING:
    from cloud.broker import BrokerAdmin

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_VIOLATIONS = 1
EXIT_UNAVAILABLE = 2
EXIT_DECLINED = 1
EXIT_USAGE = 2
OPERATOR_BLOCK_REASON = "blocked by an operator"


def _url(settings: CloudSettings) -> str:
    settings.require("database_url")
    assert settings.database_url is not None
    return settings.database_url


@contextmanager
def _ledger(settings: CloudSettings) -> Iterator[Ledger]:
    engine = make_engine(_url(settings), pool_size=1, application_name="festival-cloud")
    try:
        # The operator's verbs are exempt from FESTIVAL_STAFF_REQUIRED (docs/protocol.md).
        yield Ledger.from_settings(engine, settings, staff_required=False)
    finally:
        engine.dispose()


def _unavailable(
    handler: Callable[[argparse.Namespace, CloudSettings], int],
) -> Callable[[argparse.Namespace, CloudSettings], int]:
    """Turn a database that cannot be reached into one clear line and exit code 2."""

    def run(args: argparse.Namespace, settings: CloudSettings) -> int:
        try:
            with database.translate_errors():
                return handler(args, settings)
        except TransientDatabaseError as error:
            print(f"festival-cloud: database unavailable: {redact(str(error))}", file=sys.stderr)
            return EXIT_UNAVAILABLE

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _not_found(kind: str, name: str) -> int:
    print(f"festival-cloud: no {kind} {name!r}", file=sys.stderr)
    return EXIT_NOT_FOUND


def _listing_said_all(rows: Sequence[object], as_json: bool, nothing: str) -> bool:
    """The start of a `... list [--json]` verb: the rows as JSON, or ``nothing`` when there are
    none. True when that was the whole answer; False: the caller prints its table."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return True
    if not rows:
        print(nothing)
        return True
    return False


def _euros(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


# --- db ----------------------------------------------------------------------------------------


def _migrate(migration: Callable[[str, str], None], revision: str, settings: CloudSettings) -> int:
    url = _url(settings)
    migration(url, revision)
    print(f"database at revision {database.current_revision(url) or 'base'}")
    return EXIT_OK


@_unavailable
def db_upgrade(args: argparse.Namespace, settings: CloudSettings) -> int:
    return _migrate(database.upgrade, args.revision, settings)


@_unavailable
def db_downgrade(args: argparse.Namespace, settings: CloudSettings) -> int:
    return _migrate(database.downgrade, args.revision, settings)


@_unavailable
def db_current(args: argparse.Namespace, settings: CloudSettings) -> int:
    revision = database.current_revision(_url(settings))
    head = database.head_revision()
    if revision is None:
        print(f"base (empty; head is {head})")
    else:
        print(f"{revision}{' (head)' if revision == head else f' (head is {head})'}")
    return EXIT_OK


# --- kiosks ------------------------------------------------------------------------------------


def _broker_admin(settings: CloudSettings) -> BrokerAdmin | None:
    """The broker's control channel (MQTT_ADMIN_FILE), or None when it is not configured."""
    from cloud.broker import BrokerAdmin, ControlTls

    if settings.mqtt_admin_file is None:
        return None
    endpoint = settings.mqtt_endpoint if settings.mqtt_url is not None else None
    tls = ControlTls(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file)
    return BrokerAdmin.from_file(settings.mqtt_admin_file, endpoint=endpoint, tls=tls)


def _issue_broker_password(
    settings: CloudSettings, ledger: Ledger, kiosk_id: str, *, enabled: bool = True
) -> tuple[str, str | None, str | None]:
    """A fresh MQTT password for ``kiosk_id``: (password, note, problem).

    Its salted hash is stored in the registry first (revision 0008), so `broker config`, run now
    or later, gives the broker this very password; with MQTT_ADMIN_FILE the running broker also
    gets it at once through its control topic (``problem`` says why that failed). The password
    travels only over the control channel and to stdout, never through argv."""
    from cloud.broker import BrokerControlError, hash_password, new_password

    password = new_password()
    if not ledger.set_kiosk_mqtt_password_hash(kiosk_id, hash_password(password)):
        raise ValueError(f"no kiosk {kiosk_id!r}")
    try:
        admin = _broker_admin(settings)
        if admin is None:
            return (
                password,
                "MQTT_ADMIN_FILE is not set: the broker learns this password from "
                "`festival-cloud broker config` (run it, then start or restart the broker)",
                None,
            )
        admin.issue_kiosk(settings.festival_topic_prefix, kiosk_id, password)
        if not enabled:
            admin.disable_client(kiosk_id)
    except BrokerControlError as error:
        return password, None, f"running broker not updated: {error}"
    return password, None, None


def _print_credentials(
    args: argparse.Namespace, kiosk_id: str, password: str, note: str | None, problem: str | None
) -> int:
    if args.json:
        print(
            json.dumps({"kiosk_id": kiosk_id, "mqtt_username": kiosk_id, "mqtt_password": password})
        )
    else:
        print(f"MQTT username: {kiosk_id}")
        print(f"MQTT password: {password}")
        print("  shown once; only its salted hash is kept. Client id = username.")
    if note is not None:
        print(f"festival-cloud: {note}", file=sys.stderr)
    if problem is not None:
        print(f"festival-cloud: {kiosk_id}: {problem}", file=sys.stderr)
        print(
            "  the password above is stored: `festival-cloud broker config` installs it; or fix "
            f"the broker and run: festival-cloud kiosk password {kiosk_id}",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    return EXIT_OK


@_unavailable
def kiosk_add(args: argparse.Namespace, settings: CloudSettings) -> int:
    from cloud.broker import reserved_kiosk_id_reason

    service_user = settings.mqtt_endpoint.username if settings.mqtt_url is not None else None
    reserved = reserved_kiosk_id_reason(args.kiosk_id, *([service_user] if service_user else []))
    if reserved:
        print(f"festival-cloud kiosk add: {reserved}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    with _ledger(settings) as ledger:
        try:
            refuse_pos_device_id(ledger.engine, args.kiosk_id)
            kiosk = ledger.add_kiosk(
                args.kiosk_id, args.public_key, args.role, checkpoint_id=args.checkpoint
            )
        except ValueError as error:
            print(f"festival-cloud kiosk add: {error}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        # A fresh broker password for this kiosk: shown once, kept only as a salted hash (the
        # registry's and the broker's) and in the kiosk's MQTT_URL.
        password, note, problem = _issue_broker_password(settings, ledger, kiosk.kiosk_id)
        if not args.json:
            print(
                f"kiosk {kiosk.kiosk_id} registered: role {kiosk.role},"
                f" checkpoint {kiosk.checkpoint_id}, enabled"
            )
        code = _print_credentials(args, kiosk.kiosk_id, password, note, problem)
        # (1.1) Config version 1: no menu, the deployment's default offline policy; stored
        # first, then published (with --json the notes go to stderr: stdout stays one object).
        from cloud.menu_admin import issue_configs, publish_now

        issued = issue_configs(
            ledger, [kiosk.kiosk_id], menu=None, offline=settings.default_offline_policy
        )
        publish_now(settings, ledger, issued, out=sys.stderr if args.json else sys.stdout)
    return code


@_unavailable
def kiosk_password(args: argparse.Namespace, settings: CloudSettings) -> int:
    """Rotate: a new password on the broker; the old one and its live session end at once."""
    with _ledger(settings) as ledger:
        found = [kiosk for kiosk in ledger.kiosks() if kiosk.kiosk_id == args.kiosk_id]
        if not found:
            return _not_found("kiosk", args.kiosk_id)
        password, note, problem = _issue_broker_password(
            settings, ledger, args.kiosk_id, enabled=bool(found[0].enabled)
        )
    return _print_credentials(args, args.kiosk_id, password, note, problem)


@_unavailable
def kiosk_disable(args: argparse.Namespace, settings: CloudSettings) -> int:
    from cloud.broker import BrokerControlError

    with _ledger(settings) as ledger:
        if not ledger.disable_kiosk(args.kiosk_id):
            return _not_found("kiosk", args.kiosk_id)
    print(f"kiosk {args.kiosk_id} disabled: its next request is rejected KIOSK_DISABLED")
    try:
        admin = _broker_admin(settings)
        if admin is None:
            print("  broker not changed: MQTT_ADMIN_FILE is not set", file=sys.stderr)
        elif admin.disable_client(args.kiosk_id):
            print("  broker: its MQTT login is refused from now on and its session was kicked")
        else:
            print("  broker: no MQTT credentials for it (nothing to refuse)")
    except BrokerControlError as error:
        print(f"festival-cloud: broker not updated: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


@_unavailable
def kiosk_list(args: argparse.Namespace, settings: CloudSettings) -> int:
    with _ledger(settings) as ledger:
        keys = {kiosk.kiosk_id: kiosk.public_key_b64 for kiosk in ledger.kiosks()}
        overview = ledger.kiosk_overview()
    for row in overview:
        row["public_key_b64"] = keys.get(str(row["kiosk_id"]))
    if _listing_said_all(overview, args.json, "no kiosks registered"):
        return EXIT_OK
    header = (
        f"{'KIOSK':<24} {'ROLE':<10} {'CHECKPOINT':<24} {'ENABLED':<7} {'STATE':<7}"
        f" {'LAST SEQ':>9}  MISSING"
    )
    print(header)
    for row in overview:
        missing = ", ".join(
            f"{first}" if first == last else f"{first}-{last}"
            for first, last in row["missing_seq_ranges"]  # type: ignore[attr-defined]
        )
        print(
            f"{row['kiosk_id']!s:<24} {row['role']!s:<10} {row['checkpoint_id']!s:<24} "
            f"{'yes' if row['enabled'] else 'no':<7} "
            f"{row['state']!s:<7} {row['last_seq'] if row['last_seq'] is not None else '-':>9}  "
            f"{missing or '-'}"
        )
    return EXIT_OK


# --- cards -------------------------------------------------------------------------------------


@_unavailable
def card_show(args: argparse.Namespace, settings: CloudSettings) -> int:
    with _ledger(settings) as ledger:
        card = ledger.card(args.uid)
        history = ledger.card_transactions(args.uid, limit=10) if card else []
    if card is None:
        if args.json:
            print(json.dumps({"error": "card not found", "card_uid": args.uid}))
        return _not_found("card", args.uid)
    if args.json:
        print(
            json.dumps(
                {
                    "card_uid": card.card_uid,
                    "balance_cents": card.balance_cents,
                    "debt_cents": card.debt_cents,
                    "status": card.status,
                }
            )
        )
        return EXIT_OK
    owes = f", debt {_euros(card.debt_cents)}" if card.debt_cents else ""
    print(f"card {card.card_uid}: {card.status}, balance {_euros(card.balance_cents)}{owes}")
    for row in history:
        amount = int(row["amount_cents"])  # type: ignore[call-overload]
        print(f"  {row['created_at']}  {row['kind']:<20} {_euros(amount):>10}")
    return EXIT_OK


def _set_card_blocked(uid: str, settings: CloudSettings, *, blocked: bool) -> int:
    with _ledger(settings) as ledger:
        found = (
            ledger.block_card(uid, OPERATOR_BLOCK_REASON) if blocked else ledger.unblock_card(uid)
        )
    if not found:
        return _not_found("card", uid)
    print(f"card {uid} {'blocked' if blocked else 'unblocked'}")
    return EXIT_OK


@_unavailable
def card_block(args: argparse.Namespace, settings: CloudSettings) -> int:
    return _set_card_blocked(args.uid, settings, blocked=True)


@_unavailable
def card_unblock(args: argparse.Namespace, settings: CloudSettings) -> int:
    return _set_card_blocked(args.uid, settings, blocked=False)


@_unavailable
def card_swap(args: argparse.Namespace, settings: CloudSettings) -> int:
    """`card swap OLD NEW [--json]`: the info desk's card swap (PROTOCOL.md `card_swap`, through
    sp_card_swap): OLD's balance and debt onto NEW, OLD blocked `replaced by NEW`. The operator
    vouches for the old band (an active one too). Exit 0 when swapped, 1 when declined."""
    for uid in (args.old_uid, args.new_uid):
        if not is_valid_card_uid(uid):
            print(
                f"festival-cloud: invalid card UID {uid!r} (8, 14 or 20 upper-case hex)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    if args.old_uid == args.new_uid:
        print("festival-cloud: the old and the new card must differ", file=sys.stderr)
        return EXIT_USAGE
    with _ledger(settings) as ledger:
        # a fresh id per call: run again after a failure, it declines (the old card is replaced)
        outcome = ledger.swap_card(
            request_id=f"desk:{uuid.uuid4()}", old_card_uid=args.old_uid, new_card_uid=args.new_uid
        )
    if args.json:
        print(
            json.dumps(
                {
                    "old_card_uid": args.old_uid,
                    "card_uid": args.new_uid,
                    "status": str(outcome.status),
                    "error_code": None if outcome.error_code is None else str(outcome.error_code),
                    "message": outcome.message,
                    "transaction_id": outcome.transaction_id,
                    "balance_cents": outcome.new_balance_cents,
                    "debt_cents": outcome.debt_cents,
                }
            )
        )
    elif outcome.approved:
        owes = f", debt {_euros(outcome.debt_cents or 0)}" if outcome.debt_cents else ""
        balance = _euros(outcome.new_balance_cents or 0)
        print(f"card {args.old_uid} replaced by {args.new_uid}: balance {balance}{owes}")
    else:
        print(
            f"festival-cloud: not swapped ({outcome.error_code}): {outcome.message}",
            file=sys.stderr,
        )
    return EXIT_OK if outcome.approved else EXIT_DECLINED


def _usable_text(value: str, length_max: int) -> bool:
    """A staff or checkpoint id as the protocol takes one: 1..length_max characters, none
    that break a receipt line."""
    return 1 <= len(value) <= length_max and TEXT_FORBIDDEN_PATTERN.search(value) is None


@_unavailable
def card_cash_out(args: argparse.Namespace, settings: CloudSettings) -> int:
    """`card cash-out UID --checkpoint ID --staff STAFF_ID [--json]`: the card's balance paid
    from that checkpoint's drawer (the cash_out request through sp_cash_out) — in cash only the
    part its Stripe top-ups cannot take back, the rest refunded to them as in a payout — and
    the card blocked `cashed out`. Exit 0 when paid out, 1 with the reason when refused."""
    if not is_valid_card_uid(args.uid):
        print(
            f"festival-cloud: invalid card UID {args.uid!r} (8, 14 or 20 upper-case hex)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    for name, value, length_max in (
        ("checkpoint", args.checkpoint, CHECKPOINT_ID_LENGTH_MAX),
        ("staff", args.staff, STAFF_ID_LENGTH_MAX),
    ):
        if not _usable_text(value, length_max):
            print(f"festival-cloud: invalid --{name} {value!r}", file=sys.stderr)
            return EXIT_USAGE
    # a fresh id per call (as `card swap`): run again after a failure, it declines (blocked)
    request_id = f"desk:{uuid.uuid4()}"
    with _ledger(settings) as ledger:
        outcome = ledger.cash_out(
            request_id=request_id,
            card_uid=args.uid,
            checkpoint_id=args.checkpoint,
            staff_id=args.staff,
        )
        parts = ledger.cash_out_parts(request_id) if outcome is not None else None
    if outcome is None:
        if args.json:
            print(json.dumps({"error": "checkpoint not found", "checkpoint_id": args.checkpoint}))
        return _not_found("checkpoint", args.checkpoint)
    cash_cents, refund_cents = parts if parts is not None else (0, 0)
    if args.json:
        print(
            json.dumps(
                {
                    "card_uid": args.uid,
                    "checkpoint_id": args.checkpoint,
                    "staff_id": args.staff,
                    "status": str(outcome.status),
                    "error_code": None if outcome.error_code is None else str(outcome.error_code),
                    "message": outcome.message,
                    "transaction_id": outcome.transaction_id,
                    "previous_balance_cents": outcome.previous_balance_cents,
                    "cash_cents": cash_cents,
                    "stripe_refund_cents": refund_cents,
                }
            )
        )
    elif outcome.approved:
        print(
            f"card {args.uid} cashed out at {args.checkpoint}: hand out {_euros(cash_cents)} in"
            f" cash, {_euros(refund_cents)} refunded to Stripe, card blocked"
        )
    else:
        print(
            f"festival-cloud: not cashed out ({outcome.error_code}): {outcome.message}",
            file=sys.stderr,
        )
    return EXIT_OK if outcome.approved else EXIT_DECLINED


# --- maintenance -------------------------------------------------------------------------------


@_unavailable
def check(args: argparse.Namespace, settings: CloudSettings) -> int:
    with _ledger(settings) as ledger:
        violations = ledger.check()
    if violations:
        print(f"LEDGER CHECK FAILED: {len(violations)} violation(s)")
        for line in violations:
            print(f"  - {line}")
        return EXIT_VIOLATIONS
    print(
        "ledger OK: every transaction sums to zero, every cached balance equals its postings, "
        "no balance is negative, every approved request has exactly one transaction"
    )
    return EXIT_OK


@_unavailable
def cleanup(args: argparse.Namespace, settings: CloudSettings) -> int:
    """The idempotency cache count (first line, as before); then, only when there was any, the
    top-ups expired/deleted and the owed Stripe refunds retried (docs/operations.md)."""
    with _ledger(settings) as ledger:
        deleted = ledger.cleanup_expired_idempotency_keys()
        topups = ledger.cleanup_topups()
        refunds = _retry_owed_refunds(ledger, settings)
        dead_letters_deleted = ledger.cleanup_expired_dead_letters()
    # The first line keeps the seed's meaning (expired idempotency cache rows), for scripts.
    print(deleted)
    print(f"dead letters older than 30 days removed: {dead_letters_deleted}")
    if topups["expired"] or topups["deleted"]:
        print(
            f"top-ups: {topups['expired']} expired unpaid, {topups['deleted']} deleted after "
            f"{TOPUP_RETENTION_DAYS} days"
        )
    if refunds is not None and any(refunds.values()):
        print(
            f"stripe refunds: {refunds['succeeded']} done, {refunds['retry']} still owed, "
            f"{refunds['failed']} refused by Stripe (refund by hand)"
        )
    return EXIT_OK


def _retry_owed_refunds(ledger: Ledger, settings: CloudSettings) -> dict[str, int] | None:
    """Every owed refund, due or not: cleanup is the pass that catches what webhooks did not."""
    if not ledger.refunds_owed():
        return None
    # Imported here: only this verb needs the Stripe client (a kiosk-only install has none).
    from cloud.api.refunds import settle_refunds
    from cloud.api.stripe_gateway import CheckoutGateway, build_stripe_client

    client = build_stripe_client(settings)
    if client is None:
        print(
            "festival-cloud cleanup: Stripe refunds are owed but STRIPE_SECRET_KEY is not set",
            file=sys.stderr,
        )
        return None
    gateway = CheckoutGateway(
        client,
        currency=settings.festival_currency,
        success_url=settings.topup_success_url,
        cancel_url=settings.topup_cancel_url,
    )
    counts = {"succeeded": 0, "retry": 0, "failed": 0}
    while True:
        batch = settle_refunds(ledger, gateway, due_only=False, limit=REFUND_BATCH).as_dict()
        for key, value in batch.items():
            counts[key] += value
        # Each refund is leased when taken, so a later batch never takes the same one again.
        if sum(batch.values()) < REFUND_BATCH:
            break
    if counts["retry"]:
        print(
            f"festival-cloud cleanup: {counts['retry']} Stripe refund(s) still owed "
            "(Stripe unreachable?); the next cleanup retries them",
            file=sys.stderr,
        )
    return counts


REFUND_BATCH = 50
