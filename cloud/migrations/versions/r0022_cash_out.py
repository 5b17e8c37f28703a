"""Cash-out at a checkpoint (issue 17 §5, DESIGN.md `card cash-out`, our `cash_out` request):
the whole balance leaves the card in one `cash_out` transaction - the part refundable to its
Stripe top-ups as pending Stripe payout parts, the rest in cash from the checkpoint's drawer -
and the card is blocked `cashed out`; a debt, an unfinished payout, an open dispute, a blocked
or unknown card or nothing to pay out is declined with the reason.

Revision 0022, after 0021 (offline sales' SUN loss)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0022", "0021", None, None
upgrade, downgrade = sql_revision(__file__)
