"""Stripe credits only sessions this API created; refunds of uncreditable sessions; lost disputes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from cloud.migrations.sql import sql_revision

revision, down_revision = "0006", "0005"
branch_labels = depends_on = None
upgrade, downgrade = sql_revision(__file__)
