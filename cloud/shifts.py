"""Shifts and the cash drawer (issue 17 §4, DESIGN.md `shift close`, revision 0019).

`ShiftStore.close` runs sp_shift_close: the cash a checkpoint's drawer should hold since its last
close (its cash top-ups minus any cash paid out there), the count, the variance (counted -
expected, booked to 'variance:cash' in one 'cash_variance' transaction), and the next shift
starts. `ShiftStore.closes` reads the closes (the Z-report lists them). Money is integer cents.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cloud.database import Engine, text, translate_errors

if TYPE_CHECKING:
    from cloud.settings import CloudSettings


class ShiftRefused(ValueError):
    """An unknown checkpoint or a negative count: nothing was booked."""


@dataclass(frozen=True, slots=True)
class ShiftClose:
    close_id: str
    checkpoint_id: str
    shift_no: int
    opened_at: str | None
    closed_at: str
    expected_cents: int
    counted_cents: int
    variance_cents: int
    transaction_id: str | None
    closed_by: str | None

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> ShiftClose:
        return cls(
            close_id=str(document["close_id"]),
            checkpoint_id=str(document["checkpoint_id"]),
            shift_no=int(document["shift_no"]),
            opened_at=document.get("opened_at"),
            closed_at=str(document["closed_at"]),
            expected_cents=int(document["expected_cents"]),
            counted_cents=int(document["counted_cents"]),
            variance_cents=int(document["variance_cents"]),
            transaction_id=document.get("transaction_id"),
            closed_by=document.get("closed_by"),
        )


def _utc(column: str) -> str:
    """The SQL of a timestamptz column as the close document has it (RFC 3339, UTC, ms)."""
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"


class ShiftStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def close(self, checkpoint_id: str, counted_cents: int, closed_by: str | None) -> ShiftClose:
        """Close the checkpoint's shift; ShiftRefused for an unknown checkpoint or a count < 0."""
        with translate_errors(), self._engine.begin() as connection:
            outcome: Any = connection.execute(
                text("SELECT sp_shift_close(:checkpoint, :counted, :closed_by)"),
                {"checkpoint": checkpoint_id, "counted": counted_cents, "closed_by": closed_by},
            ).scalar_one()
        if isinstance(outcome, str):
            outcome = json.loads(outcome)
        if outcome["status"] != "closed":
            raise ShiftRefused(outcome["reason"])
        return ShiftClose.from_document(outcome)

    def closes(
        self,
        *,
        checkpoint_id: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[ShiftClose]:
        """The closes, oldest first: of one checkpoint, closed in [start, end) when given."""
        with translate_errors(), self._engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT close_id::text, checkpoint_id, shift_no,"
                    f" {_utc('opened_at')}, {_utc('closed_at')}, expected_cents, counted_cents,"
                    " variance_cents, transaction_id::text, closed_by FROM shift_closes"
                    " WHERE (CAST(:checkpoint AS text) IS NULL OR checkpoint_id = :checkpoint)"
                    "   AND (CAST(:start AS timestamptz) IS NULL OR closed_at >= :start)"
                    "   AND (CAST(:end AS timestamptz) IS NULL OR closed_at < :end)"
                    " ORDER BY closed_at, checkpoint_id, shift_no"
                ),
                {"checkpoint": checkpoint_id, "start": start, "end": end},
            ).all()
        return [ShiftClose(*row) for row in rows]


# --- the CLI: `festival-cloud shift close CHECKPOINT_ID --counted-cents N [--json]` -------------


def shift_close(args: argparse.Namespace, settings: CloudSettings) -> int:
    from cloud.admin import _euros, _unavailable, _url
    from cloud.database import make_engine

    @_unavailable
    def run(args: argparse.Namespace, settings: CloudSettings) -> int:
        engine = make_engine(_url(settings), pool_size=1, application_name="festival-cloud")
        try:
            closed = ShiftStore(engine).close(args.checkpoint_id, args.counted_cents, args.by)
        except ShiftRefused as refused:
            print(f"festival-cloud: shift close refused: {refused}", file=sys.stderr)
            return 1
        finally:
            engine.dispose()
        if args.json:
            print(json.dumps(asdict(closed)))
            return 0
        since = closed.opened_at or "the first top-up"
        variance = closed.variance_cents
        verdict = "exact" if variance == 0 else ("over" if variance > 0 else "short")
        print(
            f"checkpoint {closed.checkpoint_id}, shift {closed.shift_no} (since {since}):"
            f" expected {_euros(closed.expected_cents)}, counted {_euros(closed.counted_cents)},"
            f" variance {_euros(variance)} ({verdict}); shift {closed.shift_no + 1} started"
        )
        return 0

    return run(args, settings)
