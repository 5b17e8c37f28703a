-- Revision 0008 rolled back: the stored hashes go (a broker keeps its own copy in its state
-- file; `kiosk password` issues new ones).
DROP FUNCTION sp_set_kiosk_mqtt_password(text, jsonb);
DROP TABLE kiosk_mqtt_credentials;
