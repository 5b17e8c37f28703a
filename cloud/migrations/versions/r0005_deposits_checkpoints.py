"""Cup deposits in one deposit account, returns bounded; checkpoint_id bound to the kiosk;
bounded dead letters.

Revision 0005, after 0004, 2026-12-01."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0005", "0004", None, None
upgrade, downgrade = sql_revision(__file__)
