"""Price enforcement: a bar order is checked against the menu of the config it cites, and its
lines keep their VAT rate and category (PROTOCOL.md 1.1 "Menus", PRICE_MISMATCH).

Revision 0011, after 0010."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0011", "0010", None, None
upgrade, downgrade = sql_revision(__file__)
