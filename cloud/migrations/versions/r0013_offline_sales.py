"""Offline sales, the cloud's half: debts (a receivable per card), offline sales judged by the
config they cite and bounded per kiosk (OFFLINE_LIMIT_EXCEEDED), top-ups paying debts first,
indebted cards on the deny-list (PROTOCOL.md 1.1 "Offline sales").

Revision 0013, after 0012 (the portal)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0013", "0012", None, None
upgrade, downgrade = sql_revision(__file__)
