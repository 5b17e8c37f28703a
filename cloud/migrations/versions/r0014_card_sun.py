"""Genuine wristbands, the cloud's check: the SUN counters accepted per wristband, decided in the
transaction that applies a request (PROTOCOL.md 1.1 "Genuine wristbands", CARD_NOT_GENUINE).

Revision 0014, after 0013 (offline sales)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0014", "0013", None, None
upgrade, downgrade = sql_revision(__file__)
