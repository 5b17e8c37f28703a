"""Payouts after the festival (DESIGN.md "Attendee portal and payouts", issue 16 §2): the card's
whole balance leaves it at once to a payouts-pending account, split into donation, fee, Stripe
refunds (newest top-up first) and a bank transfer; `payout fail` returns a part to the card.

Revision 0015, after 0014 (genuine wristbands)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0015", "0014", None, None
upgrade, downgrade = sql_revision(__file__)
