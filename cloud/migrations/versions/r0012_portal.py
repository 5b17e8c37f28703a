"""The attendee's portal: card PINs (a slow hash only), portal sessions (opened by the PIN or,
later, by a wristband tap), and the per-card login lockout, all in PostgreSQL so that several API
processes behave as one (issue 16 §1, DESIGN.md "Attendee portal and payouts").

Revision 0012, after 0011 (the price enforcement).
"""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0012", "0011", None, None
upgrade, downgrade = sql_revision(__file__)
