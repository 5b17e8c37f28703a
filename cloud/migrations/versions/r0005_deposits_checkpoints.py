"""Cup deposits in one deposit account, returns bounded; checkpoint_id bound to the kiosk;
bounded dead letters.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from cloud.migrations.sql import sql_revision

revision, down_revision = "0005", "0004"
branch_labels = depends_on = None
upgrade, downgrade = sql_revision(__file__)
