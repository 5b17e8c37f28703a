-- Revision 0007: (slot reserved; filled by its issue work).
SELECT 1;
