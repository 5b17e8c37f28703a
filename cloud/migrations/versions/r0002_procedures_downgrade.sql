-- Revision 0002 rolled back: drops every procedure and helper of the ledger (the tables stay).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND (p.proname LIKE 'sp\_%' OR p.proname LIKE 'ledger\_%'
                OR p.proname = 'cleanup_expired_idempotency_keys')
    LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END
$$;
