-- Revision 0001 rolled back: drops every table (and its data). The festival_service role stays:
-- roles are cluster-wide and another database may use it; its privileges here go with the tables.
DROP TABLE IF EXISTS recharges, bar_order_items, bar_orders, nfc_scan_log, app_transaction_log,
    idempotency_keys, dead_letters, topups, stripe_events, processed_requests, kiosks, postings,
    transactions, cards, accounts CASCADE;
DROP FUNCTION IF EXISTS trg_postings_balanced();
DROP FUNCTION IF EXISTS trg_forbid_change();
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'festival_service') THEN
        REVOKE USAGE ON SCHEMA public FROM festival_service;
    END IF;
END
$$;
