"""At the counter (issue 17 sections 1-2): the `void` and `card_swap` requests of PROTOCOL.md 1.1
- a bar kiosk cancels one of its orders within FESTIVAL_VOID_WINDOW_S, a checkpoint or the info
desk moves a wristband's balance and debt onto a new one (cards.replaced_by).

Revision 0016, after 0015 (payouts)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0016", "0015", None, None
upgrade, downgrade = sql_revision(__file__)
