"""The procedures restructured, behaviour unchanged: decide and write, one helper per thing, limits.

Revision 0009, after 0008, 2026-12-09."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0009", "0008", None, None
upgrade, downgrade = sql_revision(__file__)
