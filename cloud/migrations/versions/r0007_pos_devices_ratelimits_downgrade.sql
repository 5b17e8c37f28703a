-- Revision 0007 rolled back.
SELECT 1;
