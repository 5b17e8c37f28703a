-- Revision 0025: the API's role applies no kiosk request itself (issue 11 item 11, DESIGN.md
-- "least privilege per process"). Revision 0004 gave the internet-facing API its own role,
-- festival_api, but 0007 and 0024 still let it call sp_handle_request, sp_process_bar_order,
-- sp_process_checkpoint_recharge and sp_record_rejection: a compromised API process could loop
-- single calls and apply unsigned requests as any kiosk into any cash drawer. Now:
--   1. sp_pos_handle_request is the API's only way to the ledger's requests: it hashes the
--      POS device's bearer token itself, finds the registered, enabled device, forces the
--      device's id, source 'http' and a seq the device was given, refuses (stored, like a
--      kiosk's rejection) a request type its role does not allow or a top-up into another
--      drawer, and only then hands the request to sp_handle_request. Without a device's token
--      the API's role applies nothing.
--   2. festival_api loses EXECUTE on sp_handle_request, sp_process_bar_order,
--      sp_process_checkpoint_recharge and sp_record_rejection (the seed's procedures keep their
--      signatures and run as the owner and the service role).
--   3. A kiosk's top-up books into the drawer of the checkpoint it is registered for inside the
--      ledger too (until now only the consumer checked it): an absent checkpoint_id means that
--      one, another is INVALID_REQUEST, stored.

-- ---------------------------------------------------------------------------------------------
-- 1. The checkpoint rule (PROTOCOL.md 1.1 `checkpoint_id`; cloud/consumer/decisions.py
-- _bind_checkpoint has the same rule and message).

-- A kiosk's top-up (source mqtt, a registered kiosk) into another checkpoint's drawer, refused
-- INVALID_REQUEST and stored; NULL when it books into its own or was seen before (a replay or a
-- conflict is answered by its own procedure, first).
CREATE FUNCTION ledger_checkpoint_rejection(p_request jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    r ledger_request := jsonb_populate_record(NULL::ledger_request, p_request - 'decided');
    v_registered text;
BEGIN
    IF r.type IS DISTINCT FROM 'checkpoint_recharge' OR r.source IS DISTINCT FROM 'mqtt'
       OR r.checkpoint_id IS NULL
       OR EXISTS (SELECT 1 FROM processed_requests WHERE request_id = r.request_id) THEN
        RETURN NULL;
    END IF;
    SELECT k.checkpoint_id INTO v_registered FROM kiosks k WHERE k.kiosk_id = r.kiosk_id;
    IF NOT FOUND OR v_registered = r.checkpoint_id THEN
        RETURN NULL;
    END IF;
    RETURN ledger_write_requests(
        jsonb_build_array(p_request - 'decided'),
        ARRAY[ROW('new', ledger_outcome(
                      r.request_id, 'rejected', 'INVALID_REQUEST',
                      format('checkpoint_id %L is not this kiosk''s checkpoint %L',
                             left(r.checkpoint_id, 64), v_registered),
                      v_started, r.card_uid) || '{"debt_cents": null}',
                  NULL, 0)::ledger_decided],
        '{}', '{}', '{}', '{}', NULL, NULL, v_started) -> 0;
END
$$;

-- revision 0024's, with the checkpoint rule (marked 0025): one look at the batch's top-ups'
-- kiosks; a batch without a top-up into another drawer goes the way it went.
CREATE OR REPLACE FUNCTION ledger_process_requests(
    p_requests jsonb, p_balance_cents_max bigint, p_topup_cents_max bigint,
    p_return_cents_max bigint, p_menu_grace_s integer,
    p_void_window_s integer DEFAULT ledger_limit('void_window_s'),
    p_staff_required boolean DEFAULT false)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_outcomes jsonb := '[]';
    v_run jsonb := '[]';
    v_request jsonb;
    v_rejected jsonb;
    -- 0025: a kiosk's top-up without checkpoint_id from a kiosk registered for another
    -- checkpoint (bound to it), and one naming another checkpoint than its kiosk's (refused)
    v_unbound boolean;
    v_foreign boolean;
BEGIN
    IF jsonb_typeof(p_requests) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_requests must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_void_window_s IS NULL OR p_void_window_s < 0 OR p_staff_required IS NULL THEN
        RAISE EXCEPTION 'invalid limits' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- 0025: a kiosk's top-up books into its registered checkpoint's drawer (PROTOCOL.md 1.1)
    SELECT coalesce(bool_or(x ->> 'checkpoint_id' IS NULL AND k.checkpoint_id <> k.kiosk_id),
                    false),
           coalesce(bool_or(x ->> 'checkpoint_id' <> k.checkpoint_id), false)
      INTO v_unbound, v_foreign
      FROM jsonb_array_elements(p_requests) x
      JOIN kiosks k ON k.kiosk_id = x ->> 'kiosk_id'
     WHERE x ->> 'type' = 'checkpoint_recharge' AND x ->> 'source' = 'mqtt';
    IF v_unbound THEN
        SELECT jsonb_agg(CASE WHEN e.x ->> 'type' = 'checkpoint_recharge'
                               AND e.x ->> 'source' = 'mqtt' AND e.x ->> 'checkpoint_id' IS NULL
                               AND k.checkpoint_id IS NOT NULL
                              THEN e.x || jsonb_build_object('checkpoint_id', k.checkpoint_id)
                              ELSE e.x END ORDER BY e.position)
          INTO p_requests
          FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS e(x, position)
          LEFT JOIN kiosks k ON k.kiosk_id = e.x ->> 'kiosk_id';
    END IF;
    -- A late offline sale made on a band that has been replaced since follows its replacement
    -- (PROTOCOL.md `card_swap`): it is applied to the card that holds the money now. (The result
    -- still echoes the request's card_uid: the consumer answers with the request's fields.)
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_requests) x
                 JOIN cards c ON c.card_uid = x ->> 'card_uid'
                WHERE x ->> 'type' = 'bar_order' AND x ->> 'offline' = 'true'
                  AND c.replaced_by IS NOT NULL) THEN
        SELECT jsonb_agg(CASE WHEN e.x ->> 'type' = 'bar_order' AND e.x ->> 'offline' = 'true'
                              THEN e.x || jsonb_build_object(
                                  'card_uid', ledger_replacement_of(e.x ->> 'card_uid'))
                              ELSE e.x END ORDER BY e.position)
          INTO p_requests
          FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS e(x, position);
    END IF;
    -- A batch without counter or staff requests, staff roles not enforced, no top-up into
    -- another drawer (nearly every one), goes through unchanged.
    IF NOT p_staff_required AND NOT v_foreign AND NOT EXISTS (
           SELECT 1 FROM jsonb_array_elements(p_requests) x
            WHERE x ->> 'type' IN ('void', 'card_swap', 'cash_out', 'staff_login',
                                   'staff_logout')) THEN
        RETURN ledger_process_plain_requests(
            p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
            p_menu_grace_s);
    END IF;
    FOR v_request IN SELECT x.value FROM jsonb_array_elements(p_requests) WITH ORDINALITY x
                      ORDER BY x.ordinality LOOP
        -- (staff) the staff rule comes before every rule of the ledger (PROTOCOL.md's order);
        -- 0025: the checkpoint rule before it (the consumer's order)
        v_rejected := NULL;
        IF p_staff_required OR v_foreign THEN
            IF jsonb_array_length(v_run) > 0
               AND v_request ->> 'request_id' IN (
                   SELECT x ->> 'request_id' FROM jsonb_array_elements(v_run) x) THEN
                -- a request_id repeated in this batch: its first occurrence is written first
                v_outcomes := v_outcomes || ledger_process_plain_requests(
                    v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
                    p_menu_grace_s);
                v_run := '[]';
            END IF;
            IF v_foreign THEN
                v_rejected := ledger_checkpoint_rejection(v_request);
            END IF;
            IF v_rejected IS NULL AND p_staff_required THEN
                v_rejected := ledger_staff_rejection(v_request);
            END IF;
        END IF;
        IF v_rejected IS NOT NULL
           OR v_request ->> 'type' IN ('void', 'card_swap', 'cash_out', 'staff_login',
                                       'staff_logout') THEN
            IF jsonb_array_length(v_run) > 0 THEN
                v_outcomes := v_outcomes || ledger_process_plain_requests(
                    v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
                    p_menu_grace_s);
                v_run := '[]';
            END IF;
            IF v_rejected IS NOT NULL THEN
                v_outcomes := v_outcomes || jsonb_build_array(v_rejected);
            ELSIF v_request ->> 'type' IN ('staff_login', 'staff_logout') THEN
                v_outcomes := v_outcomes || jsonb_build_array(
                    ledger_process_staff_request(v_request, p_staff_required));
            ELSIF v_request ->> 'type' = 'cash_out' THEN
                v_outcomes := v_outcomes || jsonb_build_array(
                    ledger_process_cash_out(v_request, false));
            ELSE
                v_outcomes := v_outcomes || jsonb_build_array(ledger_process_counter_request(
                    v_request, p_balance_cents_max, p_void_window_s, false));
            END IF;
        ELSE
            v_run := v_run || jsonb_build_array(v_request);
        END IF;
    END LOOP;
    IF jsonb_array_length(v_run) > 0 THEN
        v_outcomes := v_outcomes || ledger_process_plain_requests(
            v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max, p_menu_grace_s);
    END IF;
    RETURN v_outcomes;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 2. The POS endpoints' entry point (cloud/api/pos.py, cloud/pos_devices.py).

-- What the API adds to a seed body it turned into a request (cloud/ledger_records.py
-- request_document of a bar_order or checkpoint_recharge): nothing else may ride along (no
-- offline sale, no SUN counter, no staff verdict, no decided postings).
CREATE FUNCTION ledger_pos_request_keys() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['v', 'type', 'request_id', 'kiosk_id', 'seq', 'created_at_ms', 'card_uid',
                 'currency', 'items', 'total_cents', 'staff_id', 'amount_cents',
                 'payment_method', 'checkpoint_id', 'payload_sha256', 'source', 'trace_id',
                 'sun_failure']
$$;

-- One request of a registered POS device: NULL when p_token is not the bearer token of the
-- enabled device p_device_id (the API answers 401), else its outcome, as sp_handle_request's.
-- The token is hashed here (SHA-256 of its UTF-8 bytes, as cloud/pos_devices.py token_sha256),
-- so the stored digest alone is no credential. The request must be the device's own (its id,
-- source http, a seq sp_pos_authenticate gave it): anything else is a caller's error
-- (invalid_parameter_value), never applied. A type the device's role does not allow
-- (OPERATION_NOT_ALLOWED) and a top-up into another drawer than the device's own
-- (INVALID_REQUEST) are stored rejections, as a kiosk's; the rest goes to sp_handle_request
-- with the API's limits (the staff rule applies to kiosks only).
CREATE FUNCTION sp_pos_handle_request(
    p_device_id text,
    p_token text,
    p_request jsonb,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'),
    p_menu_grace_s integer DEFAULT ledger_limit('menu_grace_s'))
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_device pos_devices;
    v_type text;
    v_seq bigint;
    v_code text;
    v_message text;
BEGIN
    SELECT * INTO v_device FROM pos_devices d
     WHERE d.device_id = p_device_id AND d.enabled AND p_token IS NOT NULL
       AND ledger_digests_equal(d.token_sha256, sha256(convert_to(p_token, 'UTF8')));
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(p_request) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'p_request must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_type := p_request ->> 'type';
    IF v_type IS NULL OR v_type NOT IN ('bar_order', 'checkpoint_recharge') THEN
        RAISE EXCEPTION 'a POS device sends bar orders and top-ups only'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_object_keys(p_request) k
                WHERE k <> ALL (ledger_pos_request_keys()))
       OR coalesce(p_request ->> 'sun_failure', 'missing') <> 'missing' THEN
        RAISE EXCEPTION 'a POS request carries only the fields of its seed body'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_request ->> 'kiosk_id' IS DISTINCT FROM v_device.device_id
       OR p_request ->> 'source' IS DISTINCT FROM 'http' THEN
        RAISE EXCEPTION 'a POS request is its own device''s, from source http'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF jsonb_typeof(p_request -> 'seq') IS DISTINCT FROM 'number' THEN
        RAISE EXCEPTION 'a POS request needs the seq its device was given'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_seq := (p_request ->> 'seq')::bigint;
    IF v_seq < 1 OR v_seq > v_device.last_seq THEN
        RAISE EXCEPTION 'a POS request needs the seq its device was given'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the device's role, then its own drawer (cloud/pos_devices.py ALLOWED_TYPES_BY_ROLE)
    IF NOT (v_device.role = 'all' OR v_device.role = 'bar' AND v_type = 'bar_order'
            OR v_device.role = 'checkpoint' AND v_type = 'checkpoint_recharge') THEN
        v_code := 'OPERATION_NOT_ALLOWED';
        v_message := format('POS device %s has role %s: no %s',
                            v_device.device_id, v_device.role, v_type);
    ELSIF v_type = 'checkpoint_recharge'
          AND coalesce(p_request ->> 'checkpoint_id', v_device.device_id)
              <> v_device.device_id THEN
        v_code := 'INVALID_REQUEST';
        v_message := format('checkpoint_id must be this device''s own drawer %L',
                            v_device.device_id);
    END IF;
    IF v_code IS NOT NULL THEN
        RETURN sp_record_rejection(
            p_request ->> 'request_id', v_device.device_id, v_seq, p_request ->> 'card_uid',
            p_request ->> 'payload_sha256', v_code, v_message, 'http', v_type,
            p_request ->> 'trace_id');
    END IF;
    RETURN sp_handle_request(
        p_request, p_balance_cents_max, p_topup_cents_max, p_return_cents_max, p_menu_grace_s,
        ledger_limit('void_window_s'), false);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 3. Privileges

REVOKE EXECUTE ON FUNCTION
    ledger_checkpoint_rejection(jsonb),
    ledger_pos_request_keys(),
    sp_pos_handle_request(text, text, jsonb, bigint, bigint, bigint, integer)
FROM PUBLIC;
-- An API still connected as festival_service keeps working (it warns at start), as with
-- sp_pos_authenticate (revision 0007).
GRANT EXECUTE ON FUNCTION sp_pos_handle_request(text, text, jsonb, bigint, bigint, bigint, integer)
    TO festival_api, festival_service;
REVOKE EXECUTE ON FUNCTION
    sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer, boolean),
    sp_record_rejection(text, text, bigint, text, text, text, text, text, text, text)
FROM festival_api;
-- The seed's procedures by name, every overload (as revision 0007 granted them).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.proname IN ('sp_process_bar_order', 'sp_process_checkpoint_recharge')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM festival_api', f);
    END LOOP;
END
$$;
