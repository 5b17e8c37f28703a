"""Each kiosk's MQTT password hash in the registry, so `broker config` can rebuild the broker.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from cloud.migrations.sql import sql_revision

revision, down_revision = "0008", "0007"
branch_labels = depends_on = None
upgrade, downgrade = sql_revision(__file__)
