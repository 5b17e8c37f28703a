-- Revision 0012 (the portal) undone: back to 0011 (PINs, sessions and lockouts are dropped).
DROP FUNCTION sp_portal_block(bytea, text);
DROP FUNCTION sp_portal_logout(bytea);
DROP FUNCTION sp_portal_card(bytea, integer);
DROP FUNCTION sp_portal_session(bytea);
DROP FUNCTION sp_portal_login_finish(text, boolean, bytea, integer, integer, integer);
DROP FUNCTION sp_portal_login_begin(text, integer, integer);
DROP FUNCTION ledger_portal_open_session(text, text, bytea, integer);
DROP FUNCTION sp_portal_import_pins(jsonb);
DROP FUNCTION sp_portal_set_pin(text, text, text);
DROP TABLE portal_login_failures;
DROP TABLE portal_sessions;
DROP TABLE card_pins;
DROP INDEX recharges_transaction_idx;
DROP INDEX bar_orders_transaction_idx;
