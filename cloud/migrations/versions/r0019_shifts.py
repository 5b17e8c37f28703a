"""Shifts and the cash drawer (issue 17 §4): `festival-cloud shift close CHECKPOINT --counted-cents
N` counts a checkpoint's drawer against the cash its account took since the last close and books
the variance to 'variance:cash'.

Revision 0019, after 0018 (no payout during a dispute)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0019", "0018", None, None
upgrade, downgrade = sql_revision(__file__)
