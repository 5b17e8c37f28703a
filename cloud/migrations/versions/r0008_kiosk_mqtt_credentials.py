"""Each kiosk's MQTT password hash in the registry, so `broker config` can rebuild the broker.

Revision 0008, after 0007, 2026-12-02."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0008", "0007", None, None
upgrade, downgrade = sql_revision(__file__)
