"""A payout is refused while a Stripe dispute of the card is open, from charge.dispute.created on
(issue 16: the open-dispute rule of DESIGN.md "Payout rules").

Revision 0018, after 0017 (Stripe refunds of payouts)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0018", "0017", None, None
upgrade, downgrade = sql_revision(__file__)
