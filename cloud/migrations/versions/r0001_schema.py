"""Ledger schema: double-entry tables, seed-compatible tables, triggers, the service role.

Revision 0001, 2026-11-01."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0001", None, None, None
upgrade, downgrade = sql_revision(__file__)
