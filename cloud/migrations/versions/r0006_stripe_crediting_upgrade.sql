-- Revision 0006: (slot reserved; filled by its issue work).
SELECT 1;
