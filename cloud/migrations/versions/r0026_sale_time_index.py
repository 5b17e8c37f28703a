"""The reports' time of a sale gets its index (issue 13 section 3, DESIGN.md: the hour "of the
sale's created_at_ms"): a BRIN index on the expression cloud/reports.py groups and windows by,
the kiosk's time of the sale, or the time the ledger applied it where an order has none.

Revision 0026, after 0025 (the API's role applies no kiosk request itself)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0026", "0025", None, None
upgrade, downgrade = sql_revision(__file__)
