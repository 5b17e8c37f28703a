"""Ledger schema: double-entry tables, seed-compatible tables, triggers, the service role.

Revision ID: 0001
Revises:
Create Date: 2026-11-01
"""

from cloud.migrations.sql import sql_revision

revision, down_revision = "0001", None
branch_labels = depends_on = None
upgrade, downgrade = sql_revision(__file__)
