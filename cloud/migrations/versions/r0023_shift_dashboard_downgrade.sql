-- Revision 0023's downgrade: sp_shift_close for the service role only again (revision 0019).
REVOKE EXECUTE ON FUNCTION sp_shift_close(text, bigint, text) FROM festival_api;
