"""Genuine wristbands, the cloud's check: the SUN counters accepted per wristband, decided in the
transaction that applies a request (PROTOCOL.md 1.1 "Genuine wristbands", CARD_NOT_GENUINE).

Revision 0013, after 0012."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0013", "0012", None, None
upgrade, downgrade = sql_revision(__file__)
