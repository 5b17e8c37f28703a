-- Revision 0026: an index on the time a sale is reported under (cloud/reports.py SOLD_AT_SQL).
--
-- The sales reports group and window by the sale's created_at_ms (DESIGN.md), the kiosk's clock
-- when it made the request, falling back to the time the ledger applied the order for orders
-- stored before revision 0016 kept created_at_ms. That expression is no column's, so without
-- an index of its own every report window read every order of the festival (the dashboard asks
-- for the last 24 hours every 30 s). BRIN, like bar_orders_created_at_brin: orders are inserted
-- roughly in time order (an offline sale drained late only widens its block range's minimum),
-- it costs the hot path next to nothing on insert, and a window "from X" skips every block
-- range whose newest sale is older than X. The expression must stay, to the letter, the one
-- cloud/reports.py SOLD_AT_SQL writes (with the alias o), or the planner cannot use it.
CREATE INDEX bar_orders_sold_at_brin ON bar_orders
    USING brin ((coalesce(to_timestamp(created_at_ms / 1000.0), created_at)));
