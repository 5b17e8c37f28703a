"""Stored procedures: bar orders, checkpoint and Stripe top-ups, refunds, checks, cleanup.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-01
"""

from cloud.migrations.sql import sql_revision

revision, down_revision = "0002", "0001"
branch_labels = depends_on = None
upgrade, downgrade = sql_revision(__file__)
