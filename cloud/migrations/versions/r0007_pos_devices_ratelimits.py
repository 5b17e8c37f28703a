"""Registered POS devices with hashed tokens; shared rate limits; the API role's grants.

Revision 0007, after 0006, 2026-12-01."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0007", "0006", None, None
upgrade, downgrade = sql_revision(__file__)
