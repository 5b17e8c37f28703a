"""Registered POS devices with hashed tokens; shared rate limits; the API role's grants.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from cloud.migrations.sql import sql_revision

revision, down_revision = "0007", "0006"
branch_labels = depends_on = None
upgrade, downgrade = sql_revision(__file__)
