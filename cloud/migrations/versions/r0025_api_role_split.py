"""Least privilege per process, completed (issue 11 item 11, DESIGN.md "least privilege per
process"): the API's role festival_api no longer executes sp_handle_request, the seed's
sp_process_bar_order and sp_process_checkpoint_recharge, or sp_record_rejection; the POS
endpoints reach the ledger only through sp_pos_handle_request, which verifies the device's
bearer token, role and drawer itself. A kiosk's top-up into another checkpoint's drawer is
refused INVALID_REQUEST by the ledger too, not only by the consumer.

Revision 0025, after 0024 (staff and roles)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0025", "0024", None, None
upgrade, downgrade = sql_revision(__file__)
