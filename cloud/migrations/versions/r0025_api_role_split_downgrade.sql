-- Revision 0025 (the API applies no kiosk request itself) undone: revision 0024's schema
-- exactly. festival_api gets back what 0007 and 0024 granted it; rejections that 0025's
-- checkpoint rule stored stay (they are ordinary INVALID_REQUEST rejections).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.proname IN ('sp_process_bar_order', 'sp_process_checkpoint_recharge')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO festival_api', f);
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION
    sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer, boolean),
    sp_record_rejection(text, text, bigint, text, text, text, text, text, text, text)
TO festival_api;

DROP FUNCTION sp_pos_handle_request(text, text, jsonb, bigint, bigint, bigint, integer);
DROP FUNCTION ledger_pos_request_keys();

-- revision 0024's
--@restore ledger_process_requests from 0024

DROP FUNCTION ledger_checkpoint_rejection(jsonb);
