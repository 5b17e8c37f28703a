"""Staff and roles (issue 17 section 3, PROTOCOL.md 1.1 `staff_login`/`staff_logout`,
STAFF_NOT_ALLOWED, DESIGN.md `staff add|pin|disable|list`, FESTIVAL_STAFF_REQUIRED): staff members
with their own band and a bcrypt hash of their PIN, logins per kiosk (12 hours, five failures in
15 minutes lock for 15 minutes), and - when the consumer enforces roles - every kiosk request
checked against the login of the staff member it names.

Revision 0024, after 0023 (the dashboard closes a shift)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0024", "0023", None, None
upgrade, downgrade = sql_revision(__file__)
