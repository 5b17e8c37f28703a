-- Revision 0005 rolled back.
SELECT 1;
