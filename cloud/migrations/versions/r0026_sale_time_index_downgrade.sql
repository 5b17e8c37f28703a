-- Revision 0026 rolled back: the index on the time of a sale goes; revision 0025's schema is
-- left exactly as it was.
DROP INDEX bar_orders_sold_at_brin;
