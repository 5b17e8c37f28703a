"""Stripe credits only sessions this API created; refunds of uncreditable sessions; lost disputes.

Revision 0006, after 0005, 2026-12-01."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0006", "0005", None, None
upgrade, downgrade = sql_revision(__file__)
