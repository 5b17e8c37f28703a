-- Revision 0025 (the API applies no kiosk request itself) undone: revision 0024's schema
-- exactly. festival_api gets back what 0007 and 0024 granted it; rejections that 0025's
-- checkpoint rule stored stay (they are ordinary INVALID_REQUEST rejections).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.proname IN ('sp_process_bar_order', 'sp_process_checkpoint_recharge')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO festival_api', f);
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION
    sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer, boolean),
    sp_record_rejection(text, text, bigint, text, text, text, text, text, text, text)
TO festival_api;

DROP FUNCTION sp_pos_handle_request(text, text, jsonb, bigint, bigint, bigint, integer);
DROP FUNCTION ledger_pos_request_keys();

-- revision 0024's
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
BEGIN
    IF jsonb_typeof(p_requests) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_requests must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_void_window_s IS NULL OR p_void_window_s < 0 OR p_staff_required IS NULL THEN
        RAISE EXCEPTION 'invalid limits' USING ERRCODE = 'invalid_parameter_value';
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
    -- A batch without counter or staff requests, staff roles not enforced (nearly every one),
    -- goes through unchanged.
    IF NOT p_staff_required AND NOT EXISTS (
           SELECT 1 FROM jsonb_array_elements(p_requests) x
            WHERE x ->> 'type' IN ('void', 'card_swap', 'cash_out', 'staff_login',
                                   'staff_logout')) THEN
        RETURN ledger_process_plain_requests(
            p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
            p_menu_grace_s);
    END IF;
    FOR v_request IN SELECT x.value FROM jsonb_array_elements(p_requests) WITH ORDINALITY x
                      ORDER BY x.ordinality LOOP
        -- (staff) the staff rule comes before every rule of the ledger (PROTOCOL.md's order)
        v_rejected := NULL;
        IF p_staff_required THEN
            IF jsonb_array_length(v_run) > 0
               AND v_request ->> 'request_id' IN (
                   SELECT x ->> 'request_id' FROM jsonb_array_elements(v_run) x) THEN
                -- a request_id repeated in this batch: its first occurrence is written first
                v_outcomes := v_outcomes || ledger_process_plain_requests(
                    v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
                    p_menu_grace_s);
                v_run := '[]';
            END IF;
            v_rejected := ledger_staff_rejection(v_request);
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

DROP FUNCTION ledger_checkpoint_rejection(jsonb);
