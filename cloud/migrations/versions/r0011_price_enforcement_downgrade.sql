-- Revision 0011 undone: back to 0010. The procedures are revision 0009's again, copied here
-- word for word (tests/ledger/test_r0011_prices.py compares the whole schema with 0010's).

DROP FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer);
DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint, integer);
DROP FUNCTION ledger_decide_request(
    ledger_request, text, bigint, bigint, bigint, bigint, bigint, text);
DROP FUNCTION ledger_price_problems(jsonb, integer);
DROP TRIGGER kiosk_configs_items ON kiosk_configs;
DROP FUNCTION trg_kiosk_config_items();
DROP FUNCTION ledger_config_items(text, integer, jsonb);
DROP TABLE kiosk_config_items;
ALTER TYPE ledger_request DROP ATTRIBUTE created_at_ms, DROP ATTRIBUTE config_version;

CREATE OR REPLACE FUNCTION ledger_limit(p_name text) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    CASE p_name
        WHEN 'balance_cents_max' THEN RETURN 150000;
        WHEN 'topup_cents_max' THEN RETURN 100000;
        WHEN 'return_cents_max' THEN RETURN 2000;
        -- a card's blocked_reason (cards_blocked_reason_check)
        WHEN 'reason_characters_max' THEN RETURN 200;
        -- the message of a rejection recorded by sp_record_rejection
        WHEN 'rejection_message_characters_max' THEN RETURN 200;
        -- the message of a Stripe anomaly or of an ignored event
        WHEN 'stripe_message_characters_max' THEN RETURN 300;
        -- a refund's last error (topup_refunds_last_error_check) and a Stripe refund id
        WHEN 'refund_error_characters_max' THEN RETURN 500;
        WHEN 'stripe_id_characters_max' THEN RETURN 255;
        -- how long an outcome stays in the seed's idempotency cache (idempotency_keys)
        WHEN 'idempotency_cache_s' THEN RETURN 86400;
        -- dead letters (dead_letters' CHECKs; cloud/ledger.py DEAD_LETTER_*)
        WHEN 'dead_letter_bytes_max' THEN RETURN 8192;
        WHEN 'dead_letters_per_kiosk_minute_max' THEN RETURN 60;
        WHEN 'dead_letter_topic_characters_max' THEN RETURN 512;
        WHEN 'dead_letter_reason_characters_max' THEN RETURN 1000;
        WHEN 'dead_letter_days_max' THEN RETURN 30;
        -- a kiosk id or an error code kept with a dead letter, a kiosk's firmware, a reader name
        WHEN 'name_characters_max' THEN RETURN 64;
        ELSE
            RAISE EXCEPTION 'unknown ledger limit %', p_name
                USING ERRCODE = 'invalid_parameter_value';
    END CASE;
END
$$;

CREATE FUNCTION ledger_decide_request(
    r ledger_request, p_card_status text, p_balance_cents bigint,
    p_deposit_balance_cents bigint, p_balance_cents_max bigint, p_topup_cents_max bigint,
    p_return_cents_max bigint)
RETURNS ledger_decision
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_decision ledger_decision;
    v_deposits_cents bigint;
    v_returns_cents bigint;
    v_found_deposit_line boolean;
BEGIN
    IF r.request_id IS NULL OR r.kiosk_id IS NULL OR r.card_uid IS NULL
       OR r.source IS NULL OR r.source NOT IN ('mqtt', 'http')
       OR NOT coalesce(r.payload_sha256 ~ '^[0-9a-fA-F]{64}$', false) THEN
        RAISE EXCEPTION 'malformed request % (request_id, kiosk_id, card_uid, source and a hex payload_sha256 are required)',
            left(coalesce(r.request_id, '?'), 64)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The request types: what each needs, what it moves and what it says when approved.
    CASE r.type
    WHEN 'bar_order' THEN
        IF r.total_cents IS NULL OR jsonb_typeof(r.items) IS DISTINCT FROM 'array' THEN
            RAISE EXCEPTION 'bar order % needs items and total_cents', r.request_id
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_decision.delta_cents := -r.total_cents;
        v_decision.message := 'Paid';
        v_decision.with_order := true;
        -- 0005: what the order's deposit lines charge and its return lines pay back
        IF p_deposit_balance_cents IS NOT NULL THEN
            SELECT coalesce(sum(i.quantity * i.unit_price_cents)
                                FILTER (WHERE coalesce(i.is_deposit, false)
                                          AND NOT coalesce(i.is_return, false)), 0),
                   coalesce(sum(i.quantity * i.unit_price_cents)
                                FILTER (WHERE coalesce(i.is_return, false)), 0),
                   coalesce(bool_or(coalesce(i.is_deposit, false) OR coalesce(i.is_return, false)),
                            false)
              INTO v_deposits_cents, v_returns_cents, v_found_deposit_line
              FROM jsonb_to_recordset(r.items) AS i(
                       quantity bigint, unit_price_cents bigint, is_deposit boolean,
                       is_return boolean);
            IF v_found_deposit_line THEN
                v_decision.deposit_delta_cents := v_deposits_cents - v_returns_cents;
            END IF;
        END IF;
    WHEN 'checkpoint_recharge' THEN
        IF r.amount_cents IS NULL OR r.amount_cents < 1 OR r.amount_cents > p_topup_cents_max
           OR r.payment_method IS NULL OR r.payment_method NOT IN ('cash', 'card')
           OR r.staff_id IS NULL THEN
            RAISE EXCEPTION 'checkpoint recharge % needs amount_cents 1..%, payment_method cash|card and staff_id',
                r.request_id, p_topup_cents_max
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_decision.delta_cents := r.amount_cents;
        v_decision.message := 'Topped up';
        -- The first top-up activates a wristband.
        v_decision.opens_card := p_card_status IS NULL;
    ELSE
        RAISE EXCEPTION 'unknown request type %', left(coalesce(r.type, 'null'), 32)
            USING ERRCODE = 'invalid_parameter_value';
    END CASE;
    IF v_decision.opens_card THEN
        RETURN v_decision;
    END IF;

    -- The rules, in this order, for every type.
    IF p_card_status IS NULL THEN
        v_decision.error_code := 'CARD_NOT_FOUND';
        v_decision.message := 'Unknown card: top it up first';
    ELSIF p_card_status <> 'active' THEN
        v_decision.error_code := 'CARD_BLOCKED';
        v_decision.message := 'Card blocked: please see the info desk';
    -- 0005: returns are bounded per order and by what was ever deposited (the order's own
    -- deposit lines count first), before the balance rules.
    ELSIF v_decision.deposit_delta_cents IS NOT NULL AND v_returns_cents > p_return_cents_max THEN
        v_decision.error_code := 'RETURN_LIMIT_EXCEEDED';
        v_decision.message := format('Returns of %s exceed the limit of %s per order',
                            ledger_amount_text(v_returns_cents),
                            ledger_amount_text(p_return_cents_max));
    ELSIF v_decision.deposit_delta_cents IS NOT NULL
          AND p_deposit_balance_cents + v_decision.deposit_delta_cents < 0 THEN
        v_decision.error_code := 'RETURN_LIMIT_EXCEEDED';
        v_decision.message := 'More cups returned than deposits were charged: see a supervisor';
    ELSIF p_balance_cents + v_decision.delta_cents < 0 THEN
        v_decision.error_code := 'INSUFFICIENT_FUNDS';
        v_decision.message := 'Insufficient funds';
    ELSIF v_decision.delta_cents > 0
          AND p_balance_cents + v_decision.delta_cents > p_balance_cents_max THEN
        v_decision.error_code := 'BALANCE_LIMIT_EXCEEDED';
        v_decision.message := 'Balance limit exceeded';
    END IF;
    RETURN v_decision;
END
$$;

CREATE OR REPLACE FUNCTION ledger_write_requests(
    p_requests jsonb, p_decided ledger_decided[],
    p_card_uids text[], p_card_balances bigint[], p_cards_changed boolean[],
    p_deposit_account_id bigint, p_deposit_balance_cents bigint, p_at timestamptz)
RETURNS jsonb
LANGUAGE plpgsql
-- One plan per session, as ledger_process_requests (see revision 0005).
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_claimed bigint;
    v_new_count bigint;
    v_bad_totals bigint;
    v_kiosks text[];
    v_seqs bigint[];
    v_outcomes jsonb;
BEGIN
    WITH input AS (
        SELECT x.*, o.flag, o.outcome, o.deposit_delta_cents, x.ordinality AS position,
               ledger_source_function(x.type) AS edge
          FROM jsonb_populate_recordset(NULL::ledger_request, p_requests) WITH ORDINALITY AS x
          JOIN unnest(p_decided) WITH ORDINALITY AS o ON o.ordinality = x.ordinality
    ), fresh AS (
        SELECT * FROM input WHERE flag = 'new'
    ), approved AS (
        SELECT f.*, (f.outcome ->> 'transaction_id')::uuid AS transaction_id,
               (f.outcome ->> 'new_balance_cents')::bigint AS new_balance_cents,
               (f.outcome ->> 'new_balance_cents')::bigint
               - (f.outcome ->> 'previous_balance_cents')::bigint AS delta_cents,
               ledger_counter_account(f.type, f.kiosk_id, f.payment_method, f.checkpoint_id)
                   AS counter_account
          FROM fresh f WHERE f.outcome ->> 'status' = 'approved'
    ), claims AS (
        INSERT INTO processed_requests (
            request_id, payload_sha256, kiosk_id, source, kind, status, error_code,
            transaction_id, outcome, created_at)
        SELECT f.request_id, decode(f.payload_sha256, 'hex'), f.kiosk_id, f.source, f.type,
               f.outcome ->> 'status', f.outcome ->> 'error_code',
               (f.outcome ->> 'transaction_id')::uuid, f.outcome, p_at
          FROM fresh f
        ON CONFLICT (request_id) DO NOTHING
        RETURNING 1
    ), balances AS (
        UPDATE cards k SET balance_cents = u.balance_cents, updated_at = p_at
          FROM unnest(p_card_uids, p_card_balances, p_cards_changed)
               AS u(card_uid, balance_cents, changed)
         WHERE u.changed AND k.card_uid = u.card_uid
        RETURNING 1
    ), deposit AS (
        -- 0005: the deposit account's cache, in the same transaction as its postings
        UPDATE deposit_balances d SET balance_cents = p_deposit_balance_cents, updated_at = p_at
         WHERE p_deposit_balance_cents IS NOT NULL AND d.account_id = p_deposit_account_id
        RETURNING 1
    ), ledger_transactions AS (
        INSERT INTO transactions (transaction_id, kind, request_id, created_at)
        SELECT a.transaction_id, a.type, a.request_id, p_at FROM approved a
        RETURNING 1
    ), ledger_postings AS (
        INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
        SELECT a.transaction_id, p.account_id, p.amount_cents, p.balance_after_cents
          FROM approved a
          JOIN cards c ON c.card_uid = a.card_uid
          JOIN accounts s ON s.name = a.counter_account
         -- 0005: the card pays (or gets) the total; the sales account gets the sales lines; the
         -- deposit account the deposits minus the returns. A plain order posts exactly as in
         -- 0002 (card and sales, always); an order with deposit lines skips a zero posting.
         CROSS JOIN LATERAL (VALUES
              (c.account_id, a.delta_cents, a.new_balance_cents, true),
              (s.account_id, -a.delta_cents - coalesce(a.deposit_delta_cents, 0), NULL::bigint,
               a.deposit_delta_cents IS NULL),
              (p_deposit_account_id, a.deposit_delta_cents, NULL::bigint, false))
              AS p(account_id, amount_cents, balance_after_cents, always)
         WHERE p.always OR p.amount_cents <> 0
        RETURNING 1
    ), orders AS (
        INSERT INTO bar_orders (
            order_id, transaction_id, client_request_id, card_id, kiosk_id, staff_id,
            total_cents, source, created_at)
        SELECT (a.outcome ->> 'order_id')::uuid, a.transaction_id, a.request_id, a.card_uid,
               a.kiosk_id, a.staff_id, a.total_cents, a.source, p_at
          FROM approved a WHERE a.type = 'bar_order'
        RETURNING 1
    ), order_lines AS (
        INSERT INTO bar_order_items (
            order_id, line_no, name, sku, quantity, unit_price_cents, is_deposit, is_return,
            line_total_cents)
        SELECT (a.outcome ->> 'order_id')::uuid, i.line_no, i.name, i.sku, i.quantity,
               i.unit_price_cents, coalesce(i.is_deposit, false), coalesce(i.is_return, false),
               CASE WHEN coalesce(i.is_return, false) THEN -1 ELSE 1 END
               * i.quantity * i.unit_price_cents
          FROM approved a
         CROSS JOIN LATERAL ROWS FROM (
              jsonb_to_recordset(a.items) AS (
                  name text, sku text, quantity integer, unit_price_cents bigint,
                  is_deposit boolean, is_return boolean))
              WITH ORDINALITY AS i(
                  name, sku, quantity, unit_price_cents, is_deposit, is_return, line_no)
         WHERE a.type = 'bar_order'
        RETURNING order_id, line_total_cents
    ), checkpoint_topups AS (
        INSERT INTO recharges (
            recharge_id, transaction_id, card_id, amount_cents, payment_method,
            client_request_id, staff_id, checkpoint_id, kiosk_id, source, created_at)
        SELECT ledger_uuid7(), a.transaction_id, a.card_uid, a.amount_cents, a.payment_method,
               a.request_id, a.staff_id, coalesce(a.checkpoint_id, a.kiosk_id), a.kiosk_id,
               a.source, p_at
          FROM approved a WHERE a.type = 'checkpoint_recharge'
        RETURNING 1
    ), audit AS (
        SELECT ledger_log_entries(array_agg(ROW(
                   p_at, i.type,
                   CASE i.flag WHEN 'replayed' THEN 'replayed' ELSE i.outcome ->> 'status' END,
                   i.edge, i.card_uid, coalesce(i.total_cents, i.amount_cents),
                   (i.outcome ->> 'previous_balance_cents')::bigint,
                   (i.outcome ->> 'new_balance_cents')::bigint, i.outcome ->> 'error_code',
                   jsonb_build_object('source', i.source, 'seq', i.seq,
                                      'replayed', i.flag = 'replayed'),
                   i.request_id,
                   CASE WHEN i.flag = 'new' THEN (i.outcome ->> 'transaction_id')::uuid END,
                   i.kiosk_id, i.trace_id)::ledger_log_entry ORDER BY i.position)) AS done
          FROM input i
    ), cache AS (
        SELECT ledger_cache_outcomes(
                   array_agg(ROW(f.request_id, f.edge, f.outcome)::ledger_cache_entry
                             ORDER BY f.position),
                   p_at) AS done
          FROM fresh f
    )
    SELECT (SELECT count(*) FROM claims), (SELECT count(*) FROM fresh),
           -- The items must add up to what the card was charged (checked in Python and here).
           (SELECT count(*)
              FROM approved a
              LEFT JOIN (SELECT l.order_id, sum(l.line_total_cents) AS total_cents
                           FROM order_lines l GROUP BY l.order_id) l
                     ON l.order_id = (a.outcome ->> 'order_id')::uuid
             WHERE a.type = 'bar_order' AND coalesce(l.total_cents, 0) <> a.total_cents),
           seqs.kiosk_ids, seqs.seqs,
           (SELECT jsonb_agg(i.outcome ORDER BY i.position) FROM input i)
      INTO v_claimed, v_new_count, v_bad_totals, v_kiosks, v_seqs, v_outcomes
      FROM (SELECT array_agg(f.kiosk_id ORDER BY f.position) AS kiosk_ids,
                   array_agg(f.seq ORDER BY f.position) AS seqs
              FROM fresh f WHERE f.source = 'mqtt' AND f.seq IS NOT NULL) seqs
      -- one row each: read here, so that they run
      CROSS JOIN audit CROSS JOIN cache;

    IF v_claimed <> v_new_count THEN
        RAISE EXCEPTION 'a request_id of this batch was claimed by a concurrent transaction; retry'
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF v_bad_totals > 0 THEN
        RAISE EXCEPTION 'a bar order''s total_cents is not the sum of its items'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Seq tracking, last: kiosk rows come after cards and claims in the lock order.
    IF cardinality(v_kiosks) > 0 THEN
        PERFORM ledger_track_seqs(v_kiosks, v_seqs, p_at);
    END IF;

    RETURN coalesce(v_outcomes, '[]');
END
$$;

CREATE OR REPLACE FUNCTION ledger_process_requests(
    p_requests jsonb, p_balance_cents_max bigint, p_topup_cents_max bigint,
    p_return_cents_max bigint)
RETURNS jsonb
LANGUAGE plpgsql
-- Plan once per session: re-planning for every call (PL/pgSQL's custom plans for array and jsonb
-- parameters) cost more than executing. Every statement here is an index lookup by key or a scan
-- of the batch itself, so the generic plan is the right one.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    r ledger_request;
    v_decision ledger_decision;
    v_card cards;
    v_index integer;
    v_card_index integer;
    v_sha bytea;
    v_previous bigint;
    v_new bigint;
    v_tx uuid;
    v_order uuid;
    v_outcome jsonb;
    v_names text[];
    v_request_ids text[];
    v_card_uids text[];
    v_has_deposit_lines boolean;
    -- the batch's cards, locked, in card_uid order, with their balances as decided so far
    c_uid text[];
    c_balance bigint[];
    c_status text[];
    c_changed boolean[];
    -- requests already processed (before this batch or earlier in it)
    e_id text[];
    e_sha bytea[];
    e_outcome jsonb[];
    -- 0005: the deposit account, read and locked only for a batch with deposit or return lines
    v_deposit_account_id bigint;
    v_deposit_balance bigint;
    v_deposit_changed boolean := false;
    -- per request, in input order: what was decided
    v_decided ledger_decided[] := '{}';
BEGIN
    IF jsonb_typeof(p_requests) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_requests must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_balance_cents_max IS NULL OR p_balance_cents_max < 0
       OR p_topup_cents_max IS NULL OR p_topup_cents_max < 1
       OR p_return_cents_max IS NULL OR p_return_cents_max < 0 THEN
        RAISE EXCEPTION 'invalid limits' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. What the batch touches: request ids, cards, system accounts.
    SELECT array_agg(x ->> 'request_id'),
           array_agg(DISTINCT x ->> 'card_uid'),
           array_agg(DISTINCT ledger_counter_account(
               x ->> 'type', x ->> 'kiosk_id', x ->> 'payment_method', x ->> 'checkpoint_id')),
           -- 0005: a line's flag is true when it is there (the protocol's form leaves out false)
           coalesce(bool_or(x ->> 'type' = 'bar_order'
                            AND (x -> 'items' @> '[{"is_deposit": true}]'
                                 OR x -> 'items' @> '[{"is_return": true}]')), false)
      INTO v_request_ids, v_card_uids, v_names, v_has_deposit_lines
      FROM jsonb_array_elements(p_requests) x;

    -- 2. Lock every card of the batch, in card_uid order (no deadlock between batches).
    SELECT array_agg(k.card_uid ORDER BY k.card_uid), array_agg(k.balance_cents ORDER BY k.card_uid),
           array_agg(k.status ORDER BY k.card_uid), array_agg(false)
      INTO c_uid, c_balance, c_status, c_changed
      FROM (SELECT cards.card_uid, cards.balance_cents, cards.status
              FROM cards WHERE cards.card_uid = ANY (v_card_uids)
             ORDER BY cards.card_uid
               FOR UPDATE) k;

    -- 2b. (0005) The deposit account's cached balance, locked after the cards, only when an
    -- order of this batch has deposit or return lines: plain orders never wait for it.
    IF v_has_deposit_lines THEN
        SELECT d.account_id, d.balance_cents INTO v_deposit_account_id, v_deposit_balance
          FROM deposit_balances d JOIN accounts a ON a.account_id = d.account_id
         WHERE a.name = 'deposit:cups'
           FOR UPDATE OF d;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the deposit account deposit:cups has no cached balance (revision 0005)'
                USING ERRCODE = 'internal_error';
        END IF;
    END IF;

    -- 3. The system accounts the batch posts to exist (created once, on first use).
    IF (SELECT count(*) FROM accounts a WHERE a.name = ANY (v_names)) < cardinality(v_names) THEN
        INSERT INTO accounts (kind, name)
        SELECT split_part(n.name, ':', 1), n.name FROM unnest(v_names) AS n(name)
        ON CONFLICT (name) DO NOTHING;
    END IF;

    -- 4. The claims that already exist (read under the card locks).
    SELECT array_agg(q.request_id), array_agg(q.payload_sha256), array_agg(q.outcome)
      INTO e_id, e_sha, e_outcome
      FROM processed_requests q WHERE q.request_id = ANY (v_request_ids);

    -- 5. Decide every request in order, in memory. Only decisions here; rows are written by
    -- ledger_write_requests.
    FOR r IN SELECT * FROM jsonb_populate_recordset(NULL::ledger_request, p_requests) LOOP
        v_index := array_position(e_id, r.request_id);
        IF v_index IS NOT NULL THEN
            -- Seen before: checked like any request (a malformed one fails the batch), then the
            -- stored outcome again, or a conflict. Nothing changes.
            PERFORM ledger_decide_request(r, NULL, NULL, NULL, p_balance_cents_max,
                                          p_topup_cents_max, p_return_cents_max);
            IF e_sha[v_index] = decode(r.payload_sha256, 'hex') THEN
                v_decided := v_decided || ROW(
                    'replayed', e_outcome[v_index] || '{"replayed": true}', NULL)::ledger_decided;
            ELSE
                v_decided := v_decided || ROW('conflict', ledger_outcome(
                    r.request_id, 'rejected', 'IDEMPOTENCY_CONFLICT',
                    'Request id already used for a different request', v_started, r.card_uid),
                    NULL)::ledger_decided;
            END IF;
            CONTINUE;
        END IF;

        v_card_index := array_position(c_uid, r.card_uid);
        v_decision := ledger_decide_request(r, c_status[v_card_index], c_balance[v_card_index],
                                   v_deposit_balance, p_balance_cents_max, p_topup_cents_max,
                                   p_return_cents_max);
        IF v_decision.opens_card THEN
            v_card := ledger_open_card(r.card_uid);
            c_uid := c_uid || v_card.card_uid::text;
            c_balance := c_balance || v_card.balance_cents;
            c_status := c_status || v_card.status;
            c_changed := c_changed || false;
            v_card_index := cardinality(c_uid);
            v_decision := ledger_decide_request(r, v_card.status, v_card.balance_cents,
                                                v_deposit_balance,
                                       p_balance_cents_max, p_topup_cents_max, p_return_cents_max);
        END IF;

        v_previous := c_balance[v_card_index];
        v_new := v_previous;
        v_tx := NULL;
        v_order := NULL;
        IF v_decision.error_code IS NULL THEN
            v_tx := ledger_uuid7();
            IF v_decision.with_order THEN
                v_order := ledger_uuid7();
            END IF;
            v_new := v_previous + v_decision.delta_cents;
            c_balance[v_card_index] := v_new;
            c_changed[v_card_index] := true;
            IF v_decision.deposit_delta_cents IS NOT NULL THEN
                v_deposit_balance := v_deposit_balance + v_decision.deposit_delta_cents;
                v_deposit_changed := true;
            END IF;
        END IF;
        v_outcome := ledger_outcome(
            r.request_id,
            CASE WHEN v_decision.error_code IS NULL THEN 'approved' ELSE 'declined' END,
            v_decision.error_code, v_decision.message, v_started, r.card_uid, v_tx, v_previous,
            v_new, v_order);
        v_decided := v_decided || ROW(
            'new', v_outcome,
            CASE WHEN v_decision.error_code IS NULL THEN v_decision.deposit_delta_cents END
        )::ledger_decided;
        v_sha := decode(r.payload_sha256, 'hex');
        e_id := e_id || r.request_id;
        e_sha := e_sha || v_sha;
        e_outcome := e_outcome || v_outcome;
    END LOOP;

    -- 6. Write it all (and track the seqs, last).
    RETURN ledger_write_requests(
        p_requests, v_decided, c_uid, c_balance, c_changed, v_deposit_account_id,
        CASE WHEN v_deposit_changed THEN v_deposit_balance END, v_started);
END
$$;

CREATE OR REPLACE FUNCTION sp_process_batch(
    p_requests jsonb,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'))
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max)
$$;

CREATE FUNCTION sp_handle_request(
    p_request jsonb,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'))
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(p_request), p_balance_cents_max, p_topup_cents_max,
        p_return_cents_max) -> 0
$$;

CREATE OR REPLACE FUNCTION sp_process_bar_order(
    p_request_id text,
    p_card_uid text,
    p_items jsonb,
    p_total_cents bigint,
    p_payload_sha256 text,
    p_kiosk_id text,
    p_seq bigint DEFAULT NULL,
    p_staff_id text DEFAULT NULL,
    p_source text DEFAULT 'mqtt',
    p_trace_id text DEFAULT NULL,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'))
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(jsonb_build_object(
            'type', 'bar_order', 'request_id', p_request_id, 'card_uid', p_card_uid,
            'items', p_items, 'total_cents', p_total_cents, 'payload_sha256', p_payload_sha256,
            'kiosk_id', p_kiosk_id, 'seq', p_seq, 'staff_id', p_staff_id, 'source', p_source,
            'trace_id', p_trace_id)),
        p_balance_cents_max, 1, p_return_cents_max) -> 0
$$;

CREATE OR REPLACE FUNCTION sp_process_checkpoint_recharge(
    p_request_id text,
    p_card_uid text,
    p_amount_cents bigint,
    p_payment_method text,
    p_staff_id text,
    p_payload_sha256 text,
    p_kiosk_id text,
    p_seq bigint DEFAULT NULL,
    p_checkpoint_id text DEFAULT NULL,
    p_source text DEFAULT 'mqtt',
    p_trace_id text DEFAULT NULL,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'))
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(jsonb_build_object(
            'type', 'checkpoint_recharge', 'request_id', p_request_id, 'card_uid', p_card_uid,
            'amount_cents', p_amount_cents, 'payment_method', p_payment_method,
            'staff_id', p_staff_id, 'payload_sha256', p_payload_sha256, 'kiosk_id', p_kiosk_id,
            'seq', p_seq, 'checkpoint_id', p_checkpoint_id, 'source', p_source,
            'trace_id', p_trace_id)),
        p_balance_cents_max, p_topup_cents_max, 0) -> 0
$$;

REVOKE EXECUTE ON FUNCTION
    ledger_decide_request(ledger_request, text, bigint, bigint, bigint, bigint, bigint),
    ledger_process_requests(jsonb, bigint, bigint, bigint),
    sp_process_batch(jsonb, bigint, bigint, bigint),
    sp_handle_request(jsonb, bigint, bigint, bigint)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint) TO festival_service;
GRANT EXECUTE ON FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint)
    TO festival_service, festival_api;
