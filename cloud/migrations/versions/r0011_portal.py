"""The attendee's portal: card PINs (a slow hash only), portal sessions (opened by the PIN or,
later, by a wristband tap), and the per-card login lockout, all in PostgreSQL so that several API
processes behave as one (issue 16 §1, DESIGN.md "Attendee portal and payouts").

Revision 0011, after 0010. The revision id lives here only (and in this file's name and its two
.sql files): when the price-enforcement revision lands as 0011, this one becomes 0012 after it.
"""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0011", "0010", None, None
upgrade, downgrade = sql_revision(__file__)
