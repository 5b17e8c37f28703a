"""The internet-facing API gets its own database role, festival_api (least privilege per process).

Revision 0004, after 0003, 2026-12-01."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0004", "0003", None, None
upgrade, downgrade = sql_revision(__file__)
