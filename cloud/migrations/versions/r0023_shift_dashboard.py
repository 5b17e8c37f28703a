"""The dashboard closes a shift (issue 17 section 4): the API's role may call sp_shift_close, the
function `festival-cloud shift close` calls (POST /api/shifts/close, admin token).

Revision 0023, after 0022 (cash-out at a checkpoint)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0023", "0022", None, None
upgrade, downgrade = sql_revision(__file__)
