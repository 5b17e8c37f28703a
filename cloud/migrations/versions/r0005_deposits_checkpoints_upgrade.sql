-- Revision 0005: (slot reserved; filled by its issue work).
SELECT 1;
