-- Revision 0008: each kiosk's MQTT password, as the broker stores it (the dynamic security
-- plugin's salted PBKDF2-SHA512 hash, never the password), kept with the registry.
--
-- `kiosk add` and `kiosk password` issue a fresh password and store its hash here before they
-- print it; `broker config` writes these hashes into the broker's state, so a broker generated
-- (or regenerated, e.g. on a new host) after `kiosk add` accepts the password `kiosk add`
-- printed. A running broker also learns it at once through its control topic (MQTT_ADMIN_FILE).
-- Only the consumer's role (which runs the operator's verbs) reads it; the API's role cannot.
CREATE TABLE kiosk_mqtt_credentials (
    kiosk_id text PRIMARY KEY REFERENCES kiosks (kiosk_id) ON DELETE CASCADE,
    password_hash jsonb NOT NULL CHECK (
        jsonb_typeof(password_hash) = 'object'
        AND password_hash ?& ARRAY['password', 'salt', 'iterations']
        AND password_hash - ARRAY['password', 'salt', 'iterations'] = '{}'::jsonb
        AND jsonb_typeof(password_hash -> 'iterations') = 'number'
        AND length(password_hash ->> 'password') BETWEEN 1 AND 200
        AND length(password_hash ->> 'salt') BETWEEN 1 AND 100),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Store (or replace) a kiosk's password hash; false when the kiosk is not registered.
CREATE FUNCTION sp_set_kiosk_mqtt_password(p_kiosk_id text, p_password_hash jsonb)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM kiosks WHERE kiosk_id = p_kiosk_id) THEN
        RETURN false;
    END IF;
    INSERT INTO kiosk_mqtt_credentials (kiosk_id, password_hash, updated_at)
    VALUES (p_kiosk_id, p_password_hash, now())
    ON CONFLICT (kiosk_id) DO UPDATE
        SET password_hash = EXCLUDED.password_hash, updated_at = EXCLUDED.updated_at;
    RETURN true;
END
$$;

REVOKE EXECUTE ON FUNCTION sp_set_kiosk_mqtt_password(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_set_kiosk_mqtt_password(text, jsonb) TO festival_service;
GRANT SELECT ON kiosk_mqtt_credentials TO festival_service;
