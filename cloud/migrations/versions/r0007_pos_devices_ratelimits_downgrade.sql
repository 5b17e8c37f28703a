-- Revision 0007 rolled back: festival_api loses exactly what 0007 granted (by the same names,
-- so grants other revisions made stay), and the POS devices and rate-limit counters go.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.proname IN (
               'sp_process_bar_order', 'sp_process_checkpoint_recharge', 'sp_record_rejection',
               'sp_create_topup', 'sp_attach_checkout_session', 'sp_record_stripe_event',
               'sp_process_stripe_recharge', 'sp_mark_topup_failed', 'sp_handle_stripe_refund',
               'sp_handle_stripe_dispute', 'sp_block_card', 'sp_unblock_card', 'ledger_check', 'ledger_check_accounts')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM festival_api', f);
    END LOOP;
END
$$;
REVOKE SELECT ON accounts, cards, transactions, postings, kiosks, topups, idempotency_keys,
    app_transaction_log, nfc_scan_log, bar_orders, bar_order_items, recharges FROM festival_api;

DROP FUNCTION sp_rate_limit_take(text, text, integer, double precision, integer, double precision);
DROP FUNCTION ledger_bucket_tokens(double precision, timestamptz, timestamptz, integer,
    double precision);
DROP TABLE rate_limit_buckets;

DROP FUNCTION sp_pos_authenticate(text, bytea);
DROP FUNCTION sp_disable_pos_device(text);
DROP FUNCTION sp_add_pos_device(text, text, bytea);
DROP FUNCTION ledger_digests_equal(bytea, bytea);
DROP TRIGGER kiosks_refuse_pos_device_ids ON kiosks;
DROP TABLE pos_devices;
DROP FUNCTION ledger_refuse_taken_device_id();
