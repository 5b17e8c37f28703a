"""Stripe refunds and disputes: the payment intent first, the card metadata second.

Revision 0003, after 0002, 2026-11-02."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0003", "0002", None, None
upgrade, downgrade = sql_revision(__file__)
