-- Revision 0017 undone: revision 0009's sp_process_stripe_refund (as it was), the refund
-- procedures gone, the payouts' refund columns gone.
DROP FUNCTION sp_payout_refunds_seen(text, jsonb);
DROP FUNCTION sp_payout_refund_finish(uuid, text, text, text, integer);
DROP FUNCTION ledger_payout_refund_paid(uuid, text, text);
DROP FUNCTION sp_payout_refund_claim(integer, integer);

-- charge.refunded linked by the payment intent (revision 0002).
--@restore sp_process_stripe_refund from 0009

DROP INDEX payouts_stripe_refund_idx;
ALTER TABLE payouts
    DROP COLUMN refund_last_error,
    DROP COLUMN stripe_refund_id,
    DROP COLUMN refund_leased_until,
    DROP COLUMN refund_next_attempt_at,
    DROP COLUMN refund_attempts;
