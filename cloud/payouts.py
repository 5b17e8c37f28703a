"""Payouts after the festival (DESIGN.md "Attendee portal and payouts", revision 0015).

`PayoutStore` is the database adapter: `request` runs sp_payout_request (the whole balance leaves
the card in one transaction, split into donation, fee, Stripe refunds newest top-up first and a
bank transfer; the card is blocked), `fail` runs sp_payout_fail (the part's money back to the
card), `list` reads the parts. Money is integer cents throughout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cloud.database import Engine, text, translate_errors

if TYPE_CHECKING:
    from cloud.settings import CloudSettings


# A card's payout requests as the portal shows them (PayoutStore.card_requests): named here,
# because inside PayoutStore `list` is its method.
RequestDocuments = list[dict[str, Any]]


class PayoutRefused(Exception):
    """409 at the API: no balance, a debt, an unfinished payout or an open dispute."""


class PayoutInvalid(ValueError):
    """400 at the API: a donation above the balance, a missing IBAN or account holder."""


def valid_iban(iban: str) -> str | None:
    """The IBAN in its compact form when its checksum and country format hold, else None."""
    from schwifty import IBAN
    from schwifty.exceptions import SchwiftyException

    try:
        return str(IBAN(iban).compact)
    except (SchwiftyException, ValueError):
        return None


def valid_bic(bic: str) -> str | None:
    """The BIC in its compact form when its format and country hold, else None (the SEPA
    file's debtor, `payout export`)."""
    from schwifty import BIC
    from schwifty.exceptions import SchwiftyException

    try:
        return str(BIC(bic).compact)
    except (SchwiftyException, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class PayoutPart:
    payout_id: str
    request_id: str
    card_uid: str
    kind: str
    amount_cents: int
    state: str
    payment_intent_id: str | None
    iban: str | None
    account_holder: str | None


class PayoutStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def request(
        self,
        card_uid: str,
        *,
        iban: str | None,
        account_holder: str | None,
        donate_cents: int,
        fee_cents: int,
        request_key: str,
    ) -> dict[str, Any]:
        with translate_errors(), self._engine.begin() as connection:
            outcome: dict[str, Any] = connection.execute(
                text("SELECT sp_payout_request(:card_uid, :iban, :holder, :donate, :fee, :key)"),
                {
                    "card_uid": card_uid,
                    "iban": iban,
                    "holder": account_holder,
                    "donate": donate_cents,
                    "fee": fee_cents,
                    "key": request_key,
                },
            ).scalar_one()
        if isinstance(outcome, str):
            outcome = json.loads(outcome)
        if outcome["status"] == "refused":
            raise PayoutRefused(outcome["reason"])
        if outcome["status"] == "invalid":
            raise PayoutInvalid(outcome["reason"])
        return outcome

    def fail(self, payout_id: str, reason: str) -> dict[str, Any] | None:
        with translate_errors(), self._engine.begin() as connection:
            outcome: dict[str, Any] | None = connection.execute(
                text("SELECT sp_payout_fail(CAST(:id AS uuid), :reason)"),
                {"id": payout_id, "reason": reason},
            ).scalar_one()
        return outcome

    def list(self, state: str | None = None, card_uid: str | None = None) -> list[PayoutPart]:
        with translate_errors(), self._engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT payout_id::text, request_id::text, card_uid, kind, amount_cents,"
                    " state, payment_intent_id, iban, account_holder FROM payouts"
                    " WHERE (CAST(:state AS text) IS NULL OR state = :state)"
                    "   AND (CAST(:card AS text) IS NULL OR card_uid = :card)"
                    " ORDER BY created_at, kind, payout_id"
                ),
                {"state": state, "card": card_uid},
            ).all()
        return [PayoutPart(*row) for row in rows]

    def card_requests(self, card_uid: str) -> RequestDocuments:
        """The card's payout requests, newest first, for the attendee's page: each with its
        parts (kind, amount, state) and the request's state (`request_state`). The IBAN only as
        its last four characters: a phone that merely touched the band sees no account."""
        with translate_errors(), self._engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT request_id::text, kind, amount_cents, state, iban,"
                    " to_char(min(created_at) OVER (PARTITION BY request_id) AT TIME ZONE 'UTC',"
                    '         \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\') AS requested_at,'
                    " to_char(updated_at AT TIME ZONE 'UTC',"
                    '         \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\') AS updated_at'
                    " FROM payouts WHERE card_uid = :card"
                    " ORDER BY created_at DESC, request_id DESC, kind, payout_id"
                ),
                {"card": card_uid},
            ).all()
        requests: dict[str, dict[str, Any]] = {}
        for row in rows:
            request = requests.setdefault(
                row.request_id,
                {
                    "payout_id": row.request_id,
                    "requested_at": row.requested_at,
                    "amount_cents": 0,
                    "parts": [],
                },
            )
            request["amount_cents"] += int(row.amount_cents)
            part: dict[str, Any] = {
                "kind": row.kind,
                "amount_cents": int(row.amount_cents),
                "state": row.state,
                "updated_at": row.updated_at,
            }
            if row.iban:
                part["iban_end"] = str(row.iban)[-4:]
            request["parts"].append(part)
        for request in requests.values():
            request["state"] = request_state([part["state"] for part in request["parts"]])
        return list(requests.values())


def request_state(part_states: list[str]) -> str:
    """One word for a whole request: `pending` while a part is pending or exported, else
    `failed` when a part failed, else `paid`."""
    if any(state in ("pending", "exported") for state in part_states):
        return "pending"
    if "failed" in part_states:
        return "failed"
    return "paid"


# A valid German test IBAN (the Bundesbank's documentation example): the demo's attendees.
DEMO_IBAN = "DE89370400440532013000"


def demo_payouts(
    engine: Engine,
    card_uids: list[str],
    *,
    fee_cents: int = 0,
    donate_cents: int = 0,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """For the demo: request a payout of each card with a balance (at most ``limit`` of them), to
    DEMO_IBAN; the outcomes of those that were not refused (no balance, a debt, ...)."""
    store = PayoutStore(engine)
    outcomes: list[dict[str, Any]] = []
    for card_uid in card_uids:
        if limit is not None and len(outcomes) >= limit:
            break
        try:
            outcomes.append(
                store.request(
                    card_uid,
                    iban=DEMO_IBAN,
                    account_holder=f"Demo attendee {card_uid}",
                    donate_cents=donate_cents,
                    fee_cents=fee_cents,
                    request_key=f"demo:{card_uid}",
                )
            )
        except (PayoutRefused, PayoutInvalid):
            continue
    return outcomes


# --- the CLI: `festival-cloud payout list|fail` -------------------------------------------------


def _cli_store(settings: CloudSettings) -> tuple[PayoutStore, Engine]:
    from cloud.admin import _url
    from cloud.database import make_engine

    engine = make_engine(_url(settings), pool_size=1, application_name="festival-cloud")
    return PayoutStore(engine), engine


def payout_list(args: argparse.Namespace, settings: CloudSettings) -> int:
    store, engine = _cli_store(settings)
    try:
        parts = store.list(state=args.state)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([asdict(part) for part in parts]))
    else:
        for part in parts:
            print(f"{part.payout_id} {part.card_uid} {part.kind} {part.state} {part.amount_cents}")
    return 0


def payout_fail(args: argparse.Namespace, settings: CloudSettings) -> int:
    store, engine = _cli_store(settings)
    try:
        outcome = store.fail(args.payout_id, args.reason)
    finally:
        engine.dispose()
    if outcome is None:
        print(
            f"festival-cloud: no pending or exported bank/Stripe payout {args.payout_id}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(outcome))
    return 0
