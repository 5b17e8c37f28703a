-- Revision 0012: the attendee's portal (issue 16 §1; DESIGN.md "Attendee portal and payouts").
--
--   * card_pins: the PIN printed on a wristband, as a slow hash only (scrypt, computed by
--     cloud/portal.py: the database never sees a PIN). `card import` and `card pin` set them.
--   * portal_sessions: a session is a random token held in the attendee's cookie; only its
--     SHA-256 is stored (256 random bits need no slow hash). `kind` says how it was opened: `pin`
--     (card UID + PIN) or `tap` (a genuine wristband touched by a phone, GET /t, later), so that a
--     payout can demand the PIN from a tap session. Sessions expire and can be revoked.
--   * portal_login_failures: the per-card lockout (DESIGN.md: 429 after 5 failures for one card
--     within 15 minutes, the right PIN too, until the 15 minutes pass). Kept for any well-formed
--     UID, known or not, so that a locked unknown card answers exactly like a locked real one.
--     An attempt counts as a failure from the moment it starts (sp_portal_login_begin) until the
--     PIN is found right (sp_portal_login_finish): many guesses sent in parallel cannot get past
--     the limit while their slow hashes are being checked.
-- Everything lives here, not in an API process, so several API processes behave as one; every
-- write goes through a SECURITY DEFINER procedure, and festival_api reads none of these tables.

CREATE TABLE card_pins (
    card_uid ledger_card_uid PRIMARY KEY REFERENCES cards (card_uid),
    -- cloud/portal.py's format: scrypt$<n>$<r>$<p>$<salt, base64>$<key, base64>
    pin_hash text NOT NULL CONSTRAINT card_pins_pin_hash_check
        CHECK (pin_hash ~ '^scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$'
               AND length(pin_hash) <= 200),
    source text NOT NULL CHECK (source IN ('import', 'operator')),
    set_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE portal_sessions (
    token_sha256 bytea PRIMARY KEY CHECK (length(token_sha256) = 32),
    card_uid ledger_card_uid NOT NULL REFERENCES cards (card_uid),
    kind text NOT NULL CHECK (kind IN ('pin', 'tap')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    CONSTRAINT portal_sessions_expiry_check CHECK (expires_at > created_at)
);
CREATE INDEX portal_sessions_expires_idx ON portal_sessions (expires_at);
CREATE INDEX portal_sessions_card_idx ON portal_sessions (card_uid);

CREATE TABLE portal_login_failures (
    card_uid ledger_card_uid PRIMARY KEY,
    -- the failures (and attempts still being checked) of the last window, oldest first
    failed_at timestamptz[] NOT NULL DEFAULT '{}' CHECK (cardinality(failed_at) <= 100),
    locked_until timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX portal_login_failures_updated_idx ON portal_login_failures (updated_at);

-- The portal lists a card's movements with what each was: the order and its items, the top-up
-- and where it was made. Both tables are found by their transaction.
CREATE INDEX bar_orders_transaction_idx ON bar_orders (transaction_id);
CREATE INDEX recharges_transaction_idx ON recharges (transaction_id);

-- ---------------------------------------------------------------------------------------------
-- PINs (the operator: `festival-cloud card import`, `card pin`)

-- Set a card's PIN hash, creating the card (balance 0) when it does not exist; true when it was
-- created. A new PIN ends the sessions opened with the old one and lifts a lockout (the operator
-- handed the holder a fresh PIN).
CREATE FUNCTION sp_portal_set_pin(p_card_uid text, p_pin_hash text, p_source text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_created boolean := NOT EXISTS (SELECT 1 FROM cards WHERE card_uid = p_card_uid);
BEGIN
    PERFORM ledger_open_card(p_card_uid);
    INSERT INTO card_pins (card_uid, pin_hash, source) VALUES (p_card_uid, p_pin_hash, p_source)
    ON CONFLICT (card_uid) DO UPDATE
        SET pin_hash = EXCLUDED.pin_hash, source = EXCLUDED.source, set_at = now();
    UPDATE portal_sessions SET revoked_at = now()
     WHERE card_uid = p_card_uid AND revoked_at IS NULL;
    DELETE FROM portal_login_failures WHERE card_uid = p_card_uid;
    RETURN v_created;
END
$$;

-- A whole supplier file in one transaction: [{"card_uid", "pin_hash"}, ...]; all or nothing.
CREATE FUNCTION sp_portal_import_pins(p_rows jsonb)
RETURNS TABLE (imported integer, created integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_row jsonb;
BEGIN
    imported := 0;
    created := 0;
    FOR v_row IN SELECT value FROM jsonb_array_elements(p_rows) LOOP
        IF sp_portal_set_pin(v_row ->> 'card_uid', v_row ->> 'pin_hash', 'import') THEN
            created := created + 1;
        END IF;
        imported := imported + 1;
    END LOOP;
    RETURN NEXT;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Logging in (the API: POST /api/portal/login)

CREATE FUNCTION ledger_portal_open_session(
    p_card_uid text, p_kind text, p_token_sha256 bytea, p_ttl_s integer)
RETURNS timestamptz
LANGUAGE sql AS $$
    INSERT INTO portal_sessions (token_sha256, card_uid, kind, expires_at)
    VALUES (p_token_sha256, p_card_uid, p_kind, now() + make_interval(secs => p_ttl_s))
    RETURNING expires_at
$$;

-- The first half of a login: may this card try now, and the hash to check the PIN against
-- (NULL for an unknown card or one without a PIN: the caller checks a dummy hash instead, so
-- both take the same time). An allowed attempt is counted as a failure until
-- sp_portal_login_finish says the PIN was right. `retry_after_s` says how long a refused one
-- waits. Each call also removes a few sessions and lockout rows nobody needs any more, which
-- keeps both tables bounded without a separate job.
CREATE FUNCTION sp_portal_login_begin(p_card_uid text, p_window_s integer, p_failures_max integer)
RETURNS TABLE (allowed boolean, retry_after_s integer, pin_hash text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now timestamptz := now();
    v_window interval := make_interval(secs => p_window_s);
    v_state portal_login_failures;
    v_recent timestamptz[];
BEGIN
    DELETE FROM portal_sessions WHERE token_sha256 IN (
        SELECT s.token_sha256 FROM portal_sessions s
         WHERE s.expires_at < v_now - interval '1 day' LIMIT 10 FOR UPDATE SKIP LOCKED);
    DELETE FROM portal_login_failures WHERE card_uid IN (
        SELECT f.card_uid FROM portal_login_failures f
         WHERE f.updated_at < v_now - 2 * v_window AND f.card_uid <> p_card_uid
           AND (f.locked_until IS NULL OR f.locked_until < v_now)
         LIMIT 10 FOR UPDATE SKIP LOCKED);

    INSERT INTO portal_login_failures (card_uid) VALUES (p_card_uid)
    ON CONFLICT (card_uid) DO NOTHING;
    SELECT * INTO STRICT v_state FROM portal_login_failures f
     WHERE f.card_uid = p_card_uid FOR UPDATE;
    IF v_state.locked_until > v_now THEN
        RETURN QUERY SELECT false,
            greatest(1, ceil(extract(epoch FROM v_state.locked_until - v_now)))::integer,
            NULL::text;
        RETURN;
    END IF;
    SELECT coalesce(array_agg(a ORDER BY a), '{}') INTO v_recent
      FROM unnest(v_state.failed_at) a WHERE a > v_now - v_window;
    IF cardinality(v_recent) >= p_failures_max THEN
        -- only attempts still being checked can fill the budget without a lock: a moment
        RETURN QUERY SELECT false, 1, NULL::text;
        RETURN;
    END IF;
    UPDATE portal_login_failures
       SET failed_at = v_recent || v_now, locked_until = NULL, updated_at = v_now
     WHERE card_uid = p_card_uid;
    RETURN QUERY SELECT true, 0, (SELECT cp.pin_hash FROM card_pins cp
                                   WHERE cp.card_uid = p_card_uid);
END
$$;

-- The second half: the PIN was right (the attempt no longer counts, a `pin` session is opened;
-- its expiry is returned) or wrong (the failure stays; the failures_max-th within the window
-- locks the card for the window's length). NULL for a wrong PIN.
CREATE FUNCTION sp_portal_login_finish(
    p_card_uid text, p_ok boolean, p_token_sha256 bytea, p_ttl_s integer, p_window_s integer,
    p_failures_max integer)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now timestamptz := now();
    v_state portal_login_failures;
BEGIN
    SELECT * INTO v_state FROM portal_login_failures f WHERE f.card_uid = p_card_uid FOR UPDATE;
    IF p_ok THEN
        IF FOUND AND cardinality(v_state.failed_at) > 0 THEN
            -- one attempt (the newest one counted: this one or a twin) was not a failure
            UPDATE portal_login_failures
               SET failed_at = failed_at[1:cardinality(failed_at) - 1], updated_at = v_now
             WHERE card_uid = p_card_uid;
        END IF;
        RETURN ledger_portal_open_session(p_card_uid, 'pin', p_token_sha256, p_ttl_s);
    END IF;
    IF FOUND AND v_state.locked_until IS NULL AND (
        SELECT count(*) FROM unnest(v_state.failed_at) a
         WHERE a > v_now - make_interval(secs => p_window_s)) >= p_failures_max
    THEN
        UPDATE portal_login_failures
           SET locked_until = v_now + make_interval(secs => p_window_s), updated_at = v_now
         WHERE card_uid = p_card_uid;
    END IF;
    RETURN NULL;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- With a session (the API: GET /api/portal/card, POST /api/portal/block, /logout)

-- The session a cookie's token names, when it is neither expired nor revoked.
CREATE FUNCTION sp_portal_session(p_token_sha256 bytea)
RETURNS TABLE (card_uid text, kind text, expires_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT s.card_uid, s.kind, s.expires_at FROM portal_sessions s
     WHERE s.token_sha256 = p_token_sha256 AND s.revoked_at IS NULL AND s.expires_at > now()
$$;

-- Everything the attendee's page shows, in one call (the session checked in the same
-- statement): NULL without a valid session. Transactions newest first, at most p_limit, each
-- with what it was: a bar order's kiosk and items, a top-up's place and payment method.
-- debt_cents is read from the card row when the column exists (offline sales add it), else 0.
CREATE FUNCTION sp_portal_card(p_token_sha256 bytea, p_limit integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_document jsonb;
BEGIN
    SELECT jsonb_build_object(
        'card_uid', c.card_uid,
        'balance_cents', c.balance_cents,
        'debt_cents', coalesce((to_jsonb(c) ->> 'debt_cents')::bigint, 0),
        'status', c.status,
        'session_kind', s.kind,
        'session_expires_at', s.expires_at,
        'transactions', coalesce((
            SELECT jsonb_agg(m.document ORDER BY m.created_at DESC, m.transaction_id DESC)
              FROM (
                SELECT t.created_at, t.transaction_id, jsonb_build_object(
                    'transaction_id', t.transaction_id,
                    'at', to_char(t.created_at AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                    'kind', t.kind,
                    'amount_cents', p.amount_cents,
                    'balance_after_cents', p.balance_after_cents,
                    'kiosk_id', coalesce(o.kiosk_id, r.kiosk_id),
                    'where', coalesce(o.kiosk_id, r.checkpoint_id, r.kiosk_id,
                                      CASE WHEN t.kind LIKE 'stripe%' THEN 'online' END),
                    'payment_method', r.payment_method,
                    'items', o.items) AS document
                  FROM postings p
                  JOIN transactions t ON t.transaction_id = p.transaction_id
                  LEFT JOIN LATERAL (
                      SELECT bo.kiosk_id, (
                          SELECT jsonb_agg(jsonb_build_object(
                                     'name', i.name, 'sku', i.sku, 'quantity', i.quantity,
                                     'unit_price_cents', i.unit_price_cents,
                                     'line_total_cents', i.line_total_cents,
                                     'is_deposit', i.is_deposit, 'is_return', i.is_return)
                                     ORDER BY i.line_no)
                            FROM bar_order_items i WHERE i.order_id = bo.order_id) AS items
                        FROM bar_orders bo WHERE bo.transaction_id = t.transaction_id
                       LIMIT 1) o ON true
                  LEFT JOIN LATERAL (
                      SELECT rc.kiosk_id, rc.checkpoint_id, rc.payment_method
                        FROM recharges rc WHERE rc.transaction_id = t.transaction_id
                       LIMIT 1) r ON true
                 WHERE p.account_id = c.account_id
                 ORDER BY t.created_at DESC, t.transaction_id DESC
                 LIMIT p_limit) m), '[]'::jsonb))
      INTO v_document
      FROM portal_sessions s
      JOIN cards c ON c.card_uid = s.card_uid
     WHERE s.token_sha256 = p_token_sha256 AND s.revoked_at IS NULL AND s.expires_at > now();
    RETURN v_document;
END
$$;

-- Logging out: the session is revoked (kept until it would have expired, for the record).
CREATE FUNCTION sp_portal_logout(p_token_sha256 bytea) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH revoked AS (
        UPDATE portal_sessions SET revoked_at = now()
         WHERE token_sha256 = p_token_sha256 AND revoked_at IS NULL
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM revoked)
$$;

-- The holder reports the band lost: blocked at once (the deny-list trigger of 0010 fires, the
-- publisher sends the new list), logged like an operator's block with edge 'portal'. A card
-- blocked already keeps its reason with this one appended (ledger_block_reason). The card's UID,
-- or NULL without a valid session. Any session may block: a phone that touched the band may.
CREATE FUNCTION sp_portal_block(p_token_sha256 bytea, p_reason text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_session portal_sessions;
    v_card cards;
BEGIN
    SELECT * INTO v_session FROM portal_sessions s
     WHERE s.token_sha256 = p_token_sha256 AND s.revoked_at IS NULL AND s.expires_at > now();
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE cards
       SET status = 'blocked',
           blocked_reason = ledger_block_reason(status, blocked_reason, p_reason),
           updated_at = v_started
     WHERE card_uid = v_session.card_uid
    RETURNING * INTO STRICT v_card;
    PERFORM ledger_log(
        p_at => v_started, p_type => 'card_block', p_status => 'approved', p_edge => 'portal',
        p_card_uid => v_card.card_uid, p_previous_balance_cents => v_card.balance_cents,
        p_new_balance_cents => v_card.balance_cents,
        p_details => jsonb_build_object('reason', p_reason, 'session_kind', v_session.kind));
    RETURN v_card.card_uid;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Privileges: the API (festival_api) logs in, reads and blocks through its session, nothing
-- else (it cannot set a PIN, read a hash but its one login's, or list sessions); the operator's
-- CLI (festival_service, or the owner) sets PINs.
REVOKE EXECUTE ON FUNCTION sp_portal_set_pin(text, text, text), sp_portal_import_pins(jsonb),
    ledger_portal_open_session(text, text, bytea, integer),
    sp_portal_login_begin(text, integer, integer),
    sp_portal_login_finish(text, boolean, bytea, integer, integer, integer),
    sp_portal_session(bytea), sp_portal_card(bytea, integer), sp_portal_logout(bytea),
    sp_portal_block(bytea, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_portal_set_pin(text, text, text), sp_portal_import_pins(jsonb)
    TO festival_service;
GRANT EXECUTE ON FUNCTION sp_portal_login_begin(text, integer, integer),
    sp_portal_login_finish(text, boolean, bytea, integer, integer, integer),
    sp_portal_session(bytea), sp_portal_card(bytea, integer), sp_portal_logout(bytea),
    sp_portal_block(bytea, text) TO festival_api;
