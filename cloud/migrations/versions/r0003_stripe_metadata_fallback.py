"""Stripe refunds and disputes: the payment intent first, the card metadata second.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-02
"""

from cloud.migrations.sql import sql_revision

revision, down_revision = "0003", "0002"
branch_labels = depends_on = None
upgrade, downgrade = sql_revision(__file__)
