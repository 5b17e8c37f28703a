-- Revision 0006 rolled back: the webhook's crediting rule, the refund queue, lost disputes and
-- top-up expiry go. Refused (with the reason) once a loss has been booked: postings are immutable,
-- so a 'loss' account cannot be removed. Expired top-ups become pending/open again.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM accounts WHERE kind = 'loss') THEN
        RAISE EXCEPTION 'cannot roll back revision 0006: a loss account exists (lost disputes '
                        'are booked in the immutable ledger)'
            USING ERRCODE = 'object_in_use';
    END IF;
END
$$;

DROP FUNCTION sp_cleanup_topups(integer);
DROP FUNCTION sp_handle_stripe_dispute_closed(text, text, text, text, bigint, text);
DROP FUNCTION sp_finish_topup_refund(text, text, text, text, integer);
DROP FUNCTION sp_claim_topup_refunds(integer, text, boolean, integer);
DROP FUNCTION sp_expire_checkout_session(text, text);
DROP FUNCTION sp_record_stripe_note(text, text, text, text);
DROP FUNCTION sp_handle_stripe_checkout(text, text, text, text, bigint, text, text, text, bigint,
                                        text);
DROP FUNCTION ledger_stripe_anomaly(timestamptz, text, text, text, text, bigint, text, text);

DROP TABLE stripe_disputes;
DROP TABLE topup_refunds;

DROP INDEX topups_expiry_idx;
UPDATE topups SET status = CASE WHEN session_id IS NULL THEN 'pending' ELSE 'open' END
 WHERE status = 'expired';
ALTER TABLE topups DROP CONSTRAINT topups_status_check;
ALTER TABLE topups ADD CONSTRAINT topups_status_check CHECK (status IN (
    'pending', 'open', 'credited', 'failed', 'declined', 'anomaly'));
ALTER TABLE topups DROP COLUMN lost_cents;
ALTER TABLE topups DROP COLUMN expires_at;

ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind IN (
    'card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit'));
