-- Revision 0007: registered point-of-sale devices (hashed tokens, role, enable/disable, their own
-- seq), rate-limit counters every API process shares, and the grants of the API's own role
-- festival_api (created by 0004). See docs/security.md "The POS API" and docs/api.md.

-- ---------------------------------------------------------------------------------------------
-- POS devices of the seed-compatible HTTP endpoints. A device id has the kiosk id format and no
-- kiosk may have it (and no POS device a kiosk's): the ledger books a device's sales and drawer
-- under its id exactly like a kiosk's, so the two namespaces must never meet.
CREATE TABLE pos_devices (
    device_id text PRIMARY KEY
        CHECK (device_id ~ '^[a-z][a-z0-9-]{0,31}$' AND device_id NOT IN ('cloud', 'pos-http')),
    role text NOT NULL CHECK (role IN ('bar', 'checkpoint', 'all')),
    -- SHA-256 of the bearer token. The token is 32 random bytes (secrets.token_urlsafe(32)), so
    -- a fast hash is enough: nobody can search a 256-bit space, and a slow hash would cost every
    -- request a key-derivation. The token itself is shown once by `pos add` and never stored.
    token_sha256 bytea NOT NULL CHECK (length(token_sha256) = 32),
    enabled boolean NOT NULL DEFAULT true,
    -- The device's own seq: one per authenticated request, in order (an HTTP client keeps no
    -- counter of its own, so the server numbers its requests; no gaps to track).
    last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    last_seen_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

-- One id namespace for kiosks and POS devices: each side refuses the other's ids. The advisory
-- lock serialises the two checks, so two concurrent registrations cannot both pass.
CREATE FUNCTION ledger_refuse_taken_device_id() RETURNS trigger
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('festival:device-ids'));
    IF TG_TABLE_NAME = 'kiosks' THEN
        IF EXISTS (SELECT 1 FROM pos_devices d WHERE d.device_id = NEW.kiosk_id) THEN
            RAISE EXCEPTION 'id % is a POS device''s id; a kiosk needs another', NEW.kiosk_id
                USING ERRCODE = 'unique_violation';
        END IF;
    ELSIF EXISTS (SELECT 1 FROM kiosks k WHERE k.kiosk_id = NEW.device_id) THEN
        RAISE EXCEPTION 'id % is a kiosk''s id; a POS device needs another', NEW.device_id
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER kiosks_refuse_pos_device_ids BEFORE INSERT OR UPDATE OF kiosk_id ON kiosks
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_taken_device_id();
CREATE TRIGGER pos_devices_refuse_kiosk_ids BEFORE INSERT OR UPDATE OF device_id ON pos_devices
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_taken_device_id();

-- Equality of two SHA-256 digests that reads every byte whatever the first difference (no early
-- exit). Comparing digests of a 256-bit random token with plain = would leak nothing usable
-- either (a timing difference tells at most how much of SHA-256(guess) matches the stored
-- digest, and a matching digest still needs a preimage), but the fold costs nothing.
CREATE FUNCTION ledger_digests_equal(p_a bytea, p_b bytea) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_a IS NOT NULL AND p_b IS NOT NULL AND length(p_a) = 32 AND length(p_b) = 32
       AND (SELECT bit_or(get_byte(p_a, i) # get_byte(p_b, i)) FROM generate_series(0, 31) AS i) = 0
$$;

-- Register a device (or rotate its token: re-adding sets a new token and role and re-enables).
CREATE FUNCTION sp_add_pos_device(p_device_id text, p_role text, p_token_sha256 bytea)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    INSERT INTO pos_devices (device_id, role, token_sha256)
    VALUES (p_device_id, p_role, p_token_sha256)
    ON CONFLICT (device_id) DO UPDATE
       SET role = EXCLUDED.role, token_sha256 = EXCLUDED.token_sha256, enabled = true,
           disabled_at = NULL, updated_at = now()
    RETURNING jsonb_build_object('device_id', device_id, 'role', role, 'enabled', enabled)
$$;

CREATE FUNCTION sp_disable_pos_device(p_device_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE pos_devices SET enabled = false, disabled_at = coalesce(disabled_at, now()),
                           updated_at = now()
     WHERE device_id = p_device_id;
    RETURN FOUND;
END
$$;

-- Authenticate one HTTP request: the enabled device with this id whose token hashes to
-- p_token_sha256 gets its next seq, and its last_seen_at moves. Anything else - unknown id,
-- disabled, wrong token, NULLs - is NULL, and changes nothing. Its own short transaction, before
-- the ledger call: a disable committed before this runs refuses the very next request.
CREATE FUNCTION sp_pos_authenticate(p_device_id text, p_token_sha256 bytea) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    UPDATE pos_devices
       SET last_seq = last_seq + 1, last_seen_at = now()
     WHERE device_id = p_device_id AND enabled
       AND ledger_digests_equal(token_sha256, p_token_sha256)
    RETURNING jsonb_build_object('device_id', device_id, 'role', role, 'seq', last_seq)
$$;

-- ---------------------------------------------------------------------------------------------
-- Rate limits shared by every API process: token buckets on the database's clock. One bucket per
-- client (p_client: its IPv4 address or its IPv6 /64, chosen by the API) and one global bucket
-- ('*') per scope (the limited route family, e.g. 'checkout'). A missing row is a full bucket.
CREATE TABLE rate_limit_buckets (
    scope text NOT NULL CHECK (length(scope) BETWEEN 1 AND 32),
    bucket text NOT NULL CHECK (length(bucket) BETWEEN 1 AND 64),
    -- not money: a fractional count of requests refilled continuously
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL,
    -- whether the call that wrote this row took a token (RETURNING sees only the new row)
    last_taken boolean NOT NULL,
    PRIMARY KEY (scope, bucket)
);
CREATE INDEX rate_limit_buckets_updated_idx ON rate_limit_buckets (scope, updated_at);

-- The tokens a bucket holds at p_now: what it held, refilled since, at most p_burst. A clock
-- that went backwards (another process's later timestamp) refills nothing.
CREATE FUNCTION ledger_bucket_tokens(
    p_tokens double precision, p_updated_at timestamptz, p_now timestamptz, p_burst integer,
    p_refill_per_s double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT least(p_burst::double precision, p_tokens
                 + p_refill_per_s * greatest(0, extract(epoch FROM p_now - p_updated_at)))
$$;

-- Take one token for one request of p_client, from its bucket and from the global one.
-- The client's bucket is touched only while the global bucket has a token (so a flood of
-- distinct clients adds rows no faster than the global rate lets requests through), and the
-- global bucket only for requests within their client's budget (so one client over its limit
-- does not use up everybody's). Both are row-locked upserts in one statement, so concurrent API
-- processes can never let more through than the buckets hold. Each call also deletes up to 16
-- client buckets that have been full again for a while, which keeps the table bounded.
CREATE FUNCTION sp_rate_limit_take(
    p_scope text, p_client text,
    p_burst integer, p_refill_per_s double precision,
    p_global_burst integer, p_global_refill_per_s double precision,
    OUT allowed boolean, OUT retry_after_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_global_before double precision;
    v_client_taken boolean;
    v_client_tokens double precision;
    v_global_taken boolean;
    v_global_tokens double precision;
BEGIN
    IF p_scope IS NULL OR p_client IS NULL OR p_client = '*' OR length(p_client) > 64
       OR p_burst IS NULL OR p_burst < 1 OR p_global_burst IS NULL OR p_global_burst < 1
       OR NOT coalesce(p_refill_per_s > 0 AND p_global_refill_per_s > 0, false) THEN
        RAISE EXCEPTION 'invalid rate limit call' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH spent AS (
        SELECT ledger_bucket_tokens(g.tokens, g.updated_at, v_now, p_global_burst,
                                    p_global_refill_per_s) AS tokens
          FROM rate_limit_buckets g WHERE g.scope = p_scope AND g.bucket = '*'
    ), client AS (
        INSERT INTO rate_limit_buckets AS c (scope, bucket, tokens, updated_at, last_taken)
        SELECT p_scope, p_client, p_burst - 1, v_now, true
         WHERE coalesce((SELECT s.tokens FROM spent s), p_global_burst) >= 1
        ON CONFLICT (scope, bucket) DO UPDATE
           SET tokens = ledger_bucket_tokens(c.tokens, c.updated_at, v_now, p_burst,
                                             p_refill_per_s)
                      - CASE WHEN ledger_bucket_tokens(c.tokens, c.updated_at, v_now, p_burst,
                                                       p_refill_per_s) >= 1 THEN 1 ELSE 0 END,
               last_taken = ledger_bucket_tokens(c.tokens, c.updated_at, v_now, p_burst,
                                                 p_refill_per_s) >= 1,
               updated_at = greatest(c.updated_at, v_now)
        RETURNING c.last_taken, c.tokens
    ), everyone AS (
        INSERT INTO rate_limit_buckets AS g (scope, bucket, tokens, updated_at, last_taken)
        SELECT p_scope, '*', p_global_burst - 1, v_now, true FROM client WHERE client.last_taken
        ON CONFLICT (scope, bucket) DO UPDATE
           SET tokens = ledger_bucket_tokens(g.tokens, g.updated_at, v_now, p_global_burst,
                                             p_global_refill_per_s)
                      - CASE WHEN ledger_bucket_tokens(g.tokens, g.updated_at, v_now,
                                 p_global_burst, p_global_refill_per_s) >= 1 THEN 1 ELSE 0 END,
               last_taken = ledger_bucket_tokens(g.tokens, g.updated_at, v_now, p_global_burst,
                                                 p_global_refill_per_s) >= 1,
               updated_at = greatest(g.updated_at, v_now)
        RETURNING g.last_taken, g.tokens
    )
    SELECT (SELECT s.tokens FROM spent s), client.last_taken, client.tokens,
           everyone.last_taken, everyone.tokens
      INTO v_global_before, v_client_taken, v_client_tokens, v_global_taken, v_global_tokens
      FROM (SELECT 1) AS one
      LEFT JOIN client ON true
      LEFT JOIN everyone ON true;

    allowed := coalesce(v_client_taken, false) AND coalesce(v_global_taken, false);
    -- How long until a token would be there (the bucket that refused, refilling).
    retry_after_ms := CASE
        WHEN allowed THEN 0
        WHEN v_client_taken IS NULL THEN  -- the global bucket was empty
            greatest(1, ceil(1000 * (1 - coalesce(v_global_before, 0)) / p_global_refill_per_s))
        WHEN NOT v_client_taken THEN
            greatest(1, ceil(1000 * (1 - v_client_tokens) / p_refill_per_s))
        ELSE greatest(1, ceil(1000 * (1 - coalesce(v_global_tokens, 0)) / p_global_refill_per_s))
    END;

    -- A bucket untouched for longer than it takes to refill completely is full: forget it.
    DELETE FROM rate_limit_buckets r
     WHERE (r.scope, r.bucket) IN (
         SELECT o.scope, o.bucket FROM rate_limit_buckets o
          WHERE o.scope = p_scope AND o.bucket <> '*'
            AND o.updated_at < v_now - make_interval(secs => p_burst / p_refill_per_s + 1)
          ORDER BY o.updated_at LIMIT 16
            FOR UPDATE SKIP LOCKED);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Privileges. New functions: EXECUTE for nobody by default (PostgreSQL grants it to PUBLIC).
REVOKE EXECUTE ON FUNCTION ledger_refuse_taken_device_id() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ledger_digests_equal(bytea, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ledger_bucket_tokens(double precision, timestamptz, timestamptz, integer,
    double precision) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_add_pos_device(text, text, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_disable_pos_device(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_pos_authenticate(text, bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_rate_limit_take(text, text, integer, double precision, integer, double precision) FROM PUBLIC;
-- The consumer's role reads the device list like the kiosk list (never the token digests). It
-- may also authenticate POS requests and take rate-limit tokens - harmless, and an API still
-- connected as festival_service keeps working (it warns at start) until its URL is switched.
GRANT SELECT (device_id, role, enabled, last_seq, last_seen_at, created_at, updated_at,
              disabled_at) ON pos_devices TO festival_service;
GRANT EXECUTE ON FUNCTION sp_pos_authenticate(text, bytea) TO festival_service;
GRANT EXECUTE ON FUNCTION sp_rate_limit_take(text, text, integer, double precision, integer, double precision)
    TO festival_service;

-- festival_api, the internet-facing API: it reads what its admin, monitoring and dashboard
-- views read, and executes exactly the entry points its routes call. It cannot apply kiosk
-- requests in bulk (sp_process_batch), register or disable kiosks or POS devices, store dead
-- letters or kiosk status, clean up, or write any table directly. Columns holding secrets or
-- raw payloads (token digests, Stripe event bodies, dead letters) are not readable.
GRANT SELECT ON accounts, cards, transactions, postings, kiosks, topups, idempotency_keys,
    app_transaction_log, nfc_scan_log, bar_orders, bar_order_items, recharges TO festival_api;
GRANT SELECT (device_id, role, enabled, last_seq, last_seen_at, created_at, updated_at,
              disabled_at) ON pos_devices TO festival_api;
-- By name, every overload: other revisions may change these functions' signatures.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.proname IN (
               -- the seed-compatible POS endpoints
               'sp_pos_authenticate', 'sp_process_bar_order', 'sp_process_checkpoint_recharge',
               'sp_record_rejection',
               -- online top-ups and Stripe's webhooks
               'sp_rate_limit_take', 'sp_create_topup', 'sp_attach_checkout_session',
               'sp_record_stripe_event', 'sp_process_stripe_recharge', 'sp_mark_topup_failed',
               'sp_handle_stripe_refund', 'sp_handle_stripe_dispute',
               -- admin and monitoring
               'sp_block_card', 'sp_unblock_card', 'ledger_check', 'ledger_check_accounts')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO festival_api', f);
    END LOOP;
END
$$;
