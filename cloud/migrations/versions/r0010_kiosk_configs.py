"""The cloud talks back: each kiosk's assigned menu and offline policy, every config and deny-list
version published, stored before it is sent (PROTOCOL.md 1.1 "Config and deny-list", "Menus").

Revision 0010, after 0009."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0010", "0009", None, None
upgrade, downgrade = sql_revision(__file__)
