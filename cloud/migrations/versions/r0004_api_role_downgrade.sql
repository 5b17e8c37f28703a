-- Revision 0004 rolled back: festival_api loses its access to this database; the role itself
-- stays (roles are cluster-wide).
REVOKE USAGE ON SCHEMA public FROM festival_api;
