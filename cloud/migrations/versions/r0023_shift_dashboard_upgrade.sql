-- Revision 0023 (shift dashboard): POST /api/shifts/close runs sp_shift_close (revision 0019)
-- as the API's role. Nothing else changes: the procedure already refuses an unknown checkpoint
-- and a negative count, and books one close per checkpoint at a time.
GRANT EXECUTE ON FUNCTION sp_shift_close(text, bigint, text) TO festival_api;
