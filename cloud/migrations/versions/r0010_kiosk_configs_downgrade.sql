-- Revision 0010 undone: back to 0009 (the configs and deny-lists issued are dropped).
DROP FUNCTION sp_note_kiosk_config_version(text, integer);
DROP FUNCTION sp_mark_denylist_published(integer);
DROP FUNCTION sp_issue_denylist();
DROP FUNCTION sp_mark_kiosk_config_published(text, integer);
DROP FUNCTION sp_issue_kiosk_config(text, text, boolean, jsonb, boolean, jsonb);
ALTER TABLE bar_order_items DROP COLUMN category, DROP COLUMN vat_rate_bp;
DROP TRIGGER cards_denylist_created_blocked ON cards;
DROP TRIGGER cards_denylist_status_changed ON cards;
DROP FUNCTION trg_denylist_changed();
DROP TABLE denylist_state;
DROP TABLE denylists;
DROP TABLE kiosk_configs;
ALTER TABLE kiosks DROP COLUMN config_version_at, DROP COLUMN config_version,
    DROP COLUMN offline_policy, DROP COLUMN menu;
