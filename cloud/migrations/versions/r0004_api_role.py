"""The internet-facing API gets its own database role, festival_api (least privilege per process).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from cloud.migrations.sql import sql_revision

revision, down_revision = "0004", "0003"
branch_labels = depends_on = None
upgrade, downgrade = sql_revision(__file__)
