-- Revision 0006 rolled back.
SELECT 1;
