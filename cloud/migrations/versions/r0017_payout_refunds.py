"""Stripe refunds of payouts (issue 16 §2, DESIGN.md "Attendee portal and payouts"): a runner leases
pending Stripe payout parts (sp_payout_refund_claim), calls Stripe's refunds API and records the
answer (sp_payout_refund_finish: paid with the refund id, retried with a backoff, or failed with
the money back on the card); the charge.refunded webhook of our own refund moves no money again
(sp_payout_refunds_seen, and sp_process_stripe_refund counts our parts).

Revision 0017, after 0016 (void and card swap)."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = "0017", "0016", None, None
upgrade, downgrade = sql_revision(__file__)
