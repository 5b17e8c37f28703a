"""Offline sales whose SUN fails go to the festival's loss account (issue 15 §4, PROTOCOL.md
1.1 "Offline sales"): approved, the card untouched (an unknown card is not created), the total
posted to `loss:offline`; `offline_sales.loss_cents`, counted by the kiosk's 24-hour bound.

Revision 0021, after 0020 (payout bank parts)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0021", "0020", None, None
upgrade, downgrade = sql_revision(__file__)
