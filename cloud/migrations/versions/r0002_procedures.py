"""Stored procedures: bar orders, checkpoint and Stripe top-ups, refunds, checks, cleanup.

Revision 0002, after 0001, 2026-11-01."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0002", "0001", None, None
upgrade, downgrade = sql_revision(__file__)
