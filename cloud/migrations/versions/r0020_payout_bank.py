"""The bank parts of payouts (DESIGN.md `payout export`, `payout mark-paid`, issue 16 §2):
`sp_payout_export` marks every pending bank part exported (returning exactly those rows),
`sp_payout_mark_paid` marks exported parts paid and books the money leaving the festival
(`payout:pending` → `bank:festival`); `ledger_check()` knows the new `payout_paid` kind.

Revision 0020, after 0019 (shifts)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0020", "0019", None, None
upgrade, downgrade = sql_revision(__file__)
