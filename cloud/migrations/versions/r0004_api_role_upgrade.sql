-- Revision 0004: a second least-privilege role for the internet-facing API process.
-- The consumer keeps festival_service; the API connects as festival_api, which is granted only
-- what the API calls (revision 0007 lists it). Roles are cluster-wide: create it only when
-- missing, and never drop it on downgrade (another database of the cluster may use it).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'festival_api') THEN
        CREATE ROLE festival_api LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created concurrently by a migration of another database
END
$$;

GRANT USAGE ON SCHEMA public TO festival_api;
