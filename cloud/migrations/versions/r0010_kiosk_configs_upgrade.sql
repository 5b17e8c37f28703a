-- Revision 0010: the cloud talks back (PROTOCOL.md 1.1 "Config and deny-list", "Menus").
--
--   * kiosks.menu / kiosks.offline_policy: what the operator assigned (`menu set`, `offline set`,
--     the admin API); NULL = no menu / must not sell offline. kiosks.config_version: the config
--     version the kiosk's latest request cited (the version it runs), shown to operators.
--   * kiosk_configs: every config ever issued to a kiosk, its version allocated and the whole
--     document stored *before* it is sent (published_at stays NULL until the broker acknowledged
--     it), so a version number is never reused, across restarts too, and an order priced from a
--     superseded version can still be checked against the menu it cites.
--   * denylists: every deny-list version issued, likewise stored before it is sent;
--     denylist_state.changes counts the card changes that may alter it (a trigger on cards), so
--     the publisher knows cheaply when to recompute.
--   * bar_order_items keep the VAT rate and category of the menu line they were sold from.
-- Every write goes through a SECURITY DEFINER procedure, like the rest of the schema.

ALTER TABLE kiosks
    ADD COLUMN menu jsonb CONSTRAINT kiosks_menu_check
        CHECK (menu IS NULL OR (jsonb_typeof(menu) = 'object' AND menu ?& ARRAY['menu_id', 'items'])),
    ADD COLUMN offline_policy jsonb CONSTRAINT kiosks_offline_policy_check
        CHECK (offline_policy IS NULL OR (jsonb_typeof(offline_policy) = 'object'
            AND offline_policy ?& ARRAY['sale_max_cents', 'card_max_cents', 'kiosk_max_cents'])),
    ADD COLUMN config_version integer CONSTRAINT kiosks_config_version_check
        CHECK (config_version >= 1),
    ADD COLUMN config_version_at timestamptz;

CREATE TABLE kiosk_configs (
    kiosk_id text NOT NULL REFERENCES kiosks (kiosk_id),
    version integer NOT NULL CHECK (version >= 1),
    -- the cloud's clock when it was issued; it is current until the next version's issued_at_ms
    issued_at_ms bigint NOT NULL CHECK (issued_at_ms > 0),
    -- protocol.models.config_to_dict of the config exactly as it is signed and published
    document jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    PRIMARY KEY (kiosk_id, version),
    CONSTRAINT kiosk_configs_document_check CHECK (
        jsonb_typeof(document) = 'object'
        AND document ->> 'type' = 'config'
        AND document ->> 'kiosk_id' = kiosk_id
        AND (document ->> 'version')::integer = version
        AND (document ->> 'issued_at_ms')::bigint = issued_at_ms)
);
CREATE INDEX kiosk_configs_unpublished ON kiosk_configs (created_at) WHERE published_at IS NULL;

CREATE TABLE denylists (
    version integer PRIMARY KEY CHECK (version >= 1),
    issued_at_ms bigint NOT NULL CHECK (issued_at_ms > 0),
    card_uids ledger_card_uid[] NOT NULL CHECK (cardinality(card_uids) <= 6000),
    -- the value of denylist_state.changes this version was computed from
    changes_seen bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX denylists_unpublished ON denylists (version) WHERE published_at IS NULL;

CREATE TABLE denylist_state (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    changes bigint NOT NULL DEFAULT 0
);
INSERT INTO denylist_state DEFAULT VALUES;

-- A card blocked, unblocked or created blocked may change the deny-list (issue 14 adds debts).
-- Only status changes fire it: a payment's balance update costs nothing here.
CREATE FUNCTION trg_denylist_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE denylist_state SET changes = changes + 1;
    PERFORM pg_notify('festival_denylist', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER cards_denylist_status_changed
    AFTER UPDATE OF status ON cards
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION trg_denylist_changed();
CREATE TRIGGER cards_denylist_created_blocked
    AFTER INSERT ON cards
    FOR EACH ROW WHEN (NEW.status <> 'active')
    EXECUTE FUNCTION trg_denylist_changed();

ALTER TABLE bar_order_items
    ADD COLUMN vat_rate_bp integer CONSTRAINT bar_order_items_vat_rate_bp_check
        CHECK (vat_rate_bp BETWEEN 0 AND 10000),
    ADD COLUMN category text CONSTRAINT bar_order_items_category_check
        CHECK (length(category) BETWEEN 1 AND 32);

-- Issue the next config of a kiosk: change what is assigned (p_set_menu / p_set_offline say which
-- of p_menu / p_offline to store; NULL = none) and store the next version's document, unsent.
-- Returns the new version; NULL for an unregistered kiosk. p_menu and p_offline must already be
-- the protocol's JSON (the caller validated them with protocol.models.parse_menu / OfflinePolicy).
CREATE FUNCTION sp_issue_kiosk_config(
    p_kiosk_id text, p_currency text,
    p_set_menu boolean DEFAULT false, p_menu jsonb DEFAULT NULL,
    p_set_offline boolean DEFAULT false, p_offline jsonb DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_kiosk kiosks%ROWTYPE;
    v_version integer;
    v_issued_at_ms bigint;
BEGIN
    SELECT * INTO v_kiosk FROM kiosks WHERE kiosk_id = p_kiosk_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_set_menu THEN
        v_kiosk.menu := p_menu;
    END IF;
    IF p_set_offline THEN
        v_kiosk.offline_policy := p_offline;
    END IF;
    UPDATE kiosks SET menu = v_kiosk.menu, offline_policy = v_kiosk.offline_policy,
        updated_at = now()
    WHERE kiosk_id = p_kiosk_id;
    SELECT coalesce(max(version), 0) + 1 INTO v_version
    FROM kiosk_configs WHERE kiosk_id = p_kiosk_id;
    -- never earlier than the version it supersedes (a clock step back must not reorder them)
    SELECT greatest((extract(epoch FROM clock_timestamp()) * 1000)::bigint,
                    coalesce(max(issued_at_ms), 0))
    INTO v_issued_at_ms FROM kiosk_configs WHERE kiosk_id = p_kiosk_id;
    INSERT INTO kiosk_configs (kiosk_id, version, issued_at_ms, document)
    VALUES (p_kiosk_id, v_version, v_issued_at_ms, jsonb_build_object(
        'v', 1, 'type', 'config', 'kiosk_id', p_kiosk_id, 'version', v_version,
        'issued_at_ms', v_issued_at_ms, 'currency', p_currency,
        'menu', coalesce(v_kiosk.menu, 'null'::jsonb),
        'offline', coalesce(v_kiosk.offline_policy, 'null'::jsonb)));
    PERFORM pg_notify('festival_config', p_kiosk_id);
    RETURN v_version;
END
$$;

-- Mark an issued config as acknowledged by the broker.
CREATE FUNCTION sp_mark_kiosk_config_published(p_kiosk_id text, p_version integer)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE kiosk_configs SET published_at = coalesce(published_at, now())
    WHERE kiosk_id = p_kiosk_id AND version = p_version;
$$;

-- The deny-list as the cards are now (PROTOCOL.md: every blocked card, sorted, unique, at most
-- 6000; over that, cards blocked as lost or stolen first). If it differs from the latest version,
-- store the next version, unsent, and return it; else record that the changes were seen and
-- return NULL. Serialised on denylist_state's one row.
CREATE FUNCTION sp_issue_denylist() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_changes bigint;
    v_uids ledger_card_uid[];
    v_latest denylists%ROWTYPE;
    v_version integer;
BEGIN
    SELECT changes INTO v_changes FROM denylist_state FOR UPDATE;
    SELECT coalesce(array_agg(card_uid ORDER BY card_uid), '{}') INTO v_uids
    FROM (
        SELECT card_uid FROM cards WHERE status <> 'active'
        ORDER BY (coalesce(blocked_reason, '') ~* '(lost|stolen)') DESC, updated_at DESC
        LIMIT 6000
    ) chosen;
    SELECT * INTO v_latest FROM denylists ORDER BY version DESC LIMIT 1;
    IF FOUND AND v_latest.card_uids = v_uids THEN
        UPDATE denylists SET changes_seen = v_changes WHERE version = v_latest.version;
        RETURN NULL;
    END IF;
    v_version := coalesce(v_latest.version, 0) + 1;
    INSERT INTO denylists (version, issued_at_ms, card_uids, changes_seen)
    VALUES (v_version, greatest((extract(epoch FROM clock_timestamp()) * 1000)::bigint,
                                coalesce(v_latest.issued_at_ms, 0)),
            v_uids, v_changes);
    RETURN v_version;
END
$$;

CREATE FUNCTION sp_mark_denylist_published(p_version integer) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE denylists SET published_at = coalesce(published_at, now()) WHERE version = p_version;
$$;

-- The config version a kiosk runs, as its latest request cited it (monitoring).
CREATE FUNCTION sp_note_kiosk_config_version(p_kiosk_id text, p_version integer) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE kiosks SET config_version = p_version, config_version_at = now()
    WHERE kiosk_id = p_kiosk_id AND config_version IS DISTINCT FROM p_version;
$$;

REVOKE EXECUTE ON FUNCTION trg_denylist_changed(), sp_issue_kiosk_config(text, text, boolean,
    jsonb, boolean, jsonb), sp_mark_kiosk_config_published(text, integer), sp_issue_denylist(),
    sp_mark_denylist_published(integer), sp_note_kiosk_config_version(text, integer) FROM PUBLIC;
GRANT SELECT ON kiosk_configs, denylists, denylist_state TO festival_service, festival_api;
GRANT EXECUTE ON FUNCTION sp_issue_kiosk_config(text, text, boolean, jsonb, boolean, jsonb),
    sp_mark_kiosk_config_published(text, integer), sp_issue_denylist(),
    sp_mark_denylist_published(integer), sp_note_kiosk_config_version(text, integer)
    TO festival_service, festival_api;
