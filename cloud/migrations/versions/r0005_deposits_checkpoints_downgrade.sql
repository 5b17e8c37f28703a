-- Revision 0005 rolled back: the deposit account, the kiosks' checkpoints and the dead-letter
-- bounds go; revision 0002's procedures come back exactly (copied below) with their grants.
--
-- The deposit account and its postings stay (the ledger is append-only and no money may be
-- stranded): revision 0004 knows no kind 'deposit', so the account becomes the system account
-- 'sales:deposit:cups' (no kiosk id contains ':', so no bar can own that name), which 0004 never
-- posts to; upgrading to 0005 again turns it back into 'deposit:cups' with its balance.
-- Dead letters keep the payload bytes they have (at most 8192 of each); their full lengths and
-- hashes go with the columns.

-- 1. Bar orders and top-ups: revision 0002's procedures, verbatim.
DROP INDEX bar_orders_created_at_brin;
DROP FUNCTION ledger_check_accounts(integer);
DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint);
DROP FUNCTION sp_process_bar_order(
    text, text, jsonb, bigint, text, text, bigint, text, text, text, bigint, bigint);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint);
DROP FUNCTION ledger_amount_text(bigint);

CREATE FUNCTION ledger_process_requests(
    p_requests jsonb, p_balance_cents_max bigint, p_topup_cents_max bigint)
RETURNS jsonb
LANGUAGE plpgsql
-- Plan once per session: re-planning the big write statement for every call (PL/pgSQL's custom
-- plans for array and jsonb parameters) cost more than executing it. Every statement here is
-- an index lookup by key or a scan of the batch itself, so the generic plan is the right one.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_now_ms bigint := ledger_ms(v_started);
    r record;
    v_index integer;
    v_card_index integer;
    v_sha bytea;
    v_code text;
    v_previous bigint;
    v_new bigint;
    v_delta bigint;
    v_tx uuid;
    v_order uuid;
    v_outcome jsonb;
    v_card cards;
    v_names text[];
    v_request_ids text[];
    v_card_uids text[];
    v_new_count integer := 0;
    v_claimed bigint;
    v_bad_totals bigint;
    v_kiosks text[];
    v_seqs bigint[];
    -- the batch's cards, locked, in card_uid order, with their balances as decided so far
    c_uid text[];
    c_balance bigint[];
    c_status text[];
    c_dirty boolean[];
    -- requests already processed (before this batch or earlier in it)
    e_id text[];
    e_sha bytea[];
    e_outcome jsonb[];
    -- per input position: its outcome, and whether it is new, a replay or a conflict
    v_outcomes jsonb[] := '{}';
    v_flags text[] := '{}';
BEGIN
    IF jsonb_typeof(p_requests) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_requests must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_balance_cents_max IS NULL OR p_balance_cents_max < 0
       OR p_topup_cents_max IS NULL OR p_topup_cents_max < 1 THEN
        RAISE EXCEPTION 'invalid limits' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. What the batch touches: request ids, cards, system accounts.
    SELECT array_agg(x ->> 'request_id'),
           array_agg(DISTINCT x ->> 'card_uid'),
           array_agg(DISTINCT CASE x ->> 'type'
               WHEN 'bar_order' THEN 'sales:' || (x ->> 'kiosk_id')
               ELSE CASE x ->> 'payment_method' WHEN 'cash' THEN 'cash:' ELSE 'terminal:' END
                    || coalesce(x ->> 'checkpoint_id', x ->> 'kiosk_id')
           END)
      INTO v_request_ids, v_card_uids, v_names
      FROM jsonb_array_elements(p_requests) x;

    -- 2. Lock every card of the batch, in card_uid order (no deadlock between batches).
    SELECT array_agg(k.card_uid ORDER BY k.card_uid), array_agg(k.balance_cents ORDER BY k.card_uid),
           array_agg(k.status ORDER BY k.card_uid), array_agg(false)
      INTO c_uid, c_balance, c_status, c_dirty
      FROM (SELECT cards.card_uid, cards.balance_cents, cards.status
              FROM cards WHERE cards.card_uid = ANY (v_card_uids)
             ORDER BY cards.card_uid
               FOR UPDATE) k;

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

    -- 5. Decide every request in order, in memory. Only decisions here; rows are written below.
    FOR r IN
        SELECT * FROM jsonb_to_recordset(p_requests) AS x(
            type text, request_id text, payload_sha256 text, kiosk_id text, card_uid text,
            source text, items jsonb, total_cents bigint, staff_id text, amount_cents bigint,
            payment_method text)
    LOOP
        IF r.request_id IS NULL OR r.kiosk_id IS NULL OR r.card_uid IS NULL
           OR r.source IS NULL OR r.source NOT IN ('mqtt', 'http')
           OR NOT coalesce(r.payload_sha256 ~ '^[0-9a-fA-F]{64}$', false) THEN
            RAISE EXCEPTION 'malformed request % (request_id, kiosk_id, card_uid, source and a hex payload_sha256 are required)',
                left(coalesce(r.request_id, '?'), 64)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF r.type = 'bar_order' THEN
            IF r.total_cents IS NULL OR jsonb_typeof(r.items) IS DISTINCT FROM 'array' THEN
                RAISE EXCEPTION 'bar order % needs items and total_cents', r.request_id
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_delta := -r.total_cents;
        ELSIF r.type = 'checkpoint_recharge' THEN
            IF r.amount_cents IS NULL OR r.amount_cents < 1 OR r.amount_cents > p_topup_cents_max
               OR r.payment_method IS NULL OR r.payment_method NOT IN ('cash', 'card')
               OR r.staff_id IS NULL THEN
                RAISE EXCEPTION 'checkpoint recharge % needs amount_cents 1..%, payment_method cash|card and staff_id',
                    r.request_id, p_topup_cents_max
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_delta := r.amount_cents;
        ELSE
            RAISE EXCEPTION 'unknown request type %', left(coalesce(r.type, 'null'), 32)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_sha := decode(r.payload_sha256, 'hex');

        v_index := array_position(e_id, r.request_id);
        IF v_index IS NOT NULL THEN
            -- Seen before: the stored outcome again, or a conflict. Nothing changes.
            IF e_sha[v_index] = v_sha THEN
                v_outcomes := v_outcomes || (e_outcome[v_index] || '{"replayed": true}');
                v_flags := v_flags || 'replayed'::text;
            ELSE
                v_outcomes := v_outcomes || jsonb_build_object(
                    'request_id', r.request_id, 'status', 'rejected',
                    'error_code', 'IDEMPOTENCY_CONFLICT',
                    'message', 'Request id already used for a different request',
                    'transaction_id', NULL, 'previous_balance_cents', NULL,
                    'new_balance_cents', NULL, 'replayed', false,
                    'processed_at_ms', v_now_ms, 'order_id', NULL, 'card_uid', r.card_uid);
                v_flags := v_flags || 'conflict'::text;
            END IF;
            CONTINUE;
        END IF;

        v_card_index := array_position(c_uid, r.card_uid);
        IF v_card_index IS NULL AND r.type = 'checkpoint_recharge' THEN
            -- The first top-up activates a wristband.
            v_card := ledger_open_card(r.card_uid);
            c_uid := c_uid || v_card.card_uid;
            c_balance := c_balance || v_card.balance_cents;
            c_status := c_status || v_card.status;
            c_dirty := c_dirty || false;
            v_card_index := cardinality(c_uid);
        END IF;

        v_code := NULL;
        v_previous := NULL;
        v_new := NULL;
        v_tx := NULL;
        v_order := NULL;
        IF v_card_index IS NULL THEN
            v_code := 'CARD_NOT_FOUND';
        ELSE
            v_previous := c_balance[v_card_index];
            v_new := v_previous;
            IF c_status[v_card_index] <> 'active' THEN
                v_code := 'CARD_BLOCKED';
            ELSIF v_previous + v_delta < 0 THEN
                v_code := 'INSUFFICIENT_FUNDS';
            ELSIF v_delta > 0 AND v_previous + v_delta > p_balance_cents_max THEN
                v_code := 'BALANCE_LIMIT_EXCEEDED';
            END IF;
        END IF;

        IF v_code IS NULL THEN
            -- ledger_uuid7() inlined: this loop is the hot path.
            v_tx := encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                        PLACING substring(int8send(ledger_ms(clock_timestamp())) FROM 3)
                        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid;
            IF r.type = 'bar_order' THEN
                v_order := encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                            PLACING substring(int8send(ledger_ms(clock_timestamp())) FROM 3)
                            FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid;
            END IF;
            v_new := v_previous + v_delta;
            c_balance[v_card_index] := v_new;
            c_dirty[v_card_index] := true;
        END IF;

        v_outcome := jsonb_build_object(
            'request_id', r.request_id,
            'status', CASE WHEN v_code IS NULL THEN 'approved' ELSE 'declined' END,
            'error_code', v_code,
            'message', CASE v_code
                WHEN 'CARD_NOT_FOUND' THEN 'Unknown card: top it up first'
                WHEN 'CARD_BLOCKED' THEN 'Card blocked: please see the info desk'
                WHEN 'INSUFFICIENT_FUNDS' THEN 'Insufficient funds'
                WHEN 'BALANCE_LIMIT_EXCEEDED' THEN 'Balance limit exceeded'
                ELSE CASE r.type WHEN 'bar_order' THEN 'Paid' ELSE 'Topped up' END
            END,
            'transaction_id', v_tx,
            'previous_balance_cents', v_previous,
            'new_balance_cents', v_new,
            'replayed', false,
            'processed_at_ms', v_now_ms,
            'order_id', v_order,
            'card_uid', r.card_uid);
        v_outcomes := v_outcomes || v_outcome;
        v_flags := v_flags || 'new'::text;
        v_new_count := v_new_count + 1;
        e_id := e_id || r.request_id;
        e_sha := e_sha || v_sha;
        e_outcome := e_outcome || v_outcome;
    END LOOP;

    -- 6. Write every row in one statement: claims, balances, transactions, postings (one INSERT,
    -- so the balance trigger sees whole transactions), the seed-compatible rows and the audit log.
    -- A claim lost to a concurrent transaction shows as fewer claimed rows than new requests.
    WITH input AS (
        SELECT x.*, o.outcome, o.flag,
               CASE x.type WHEN 'bar_order' THEN 'process-bar-order'
                           ELSE 'process-checkpoint-recharge' END AS edge
          FROM ROWS FROM (jsonb_to_recordset(p_requests) AS (
                   type text, request_id text, payload_sha256 text, kiosk_id text, seq bigint,
                   card_uid text, source text, trace_id text, items jsonb, total_cents bigint,
                   staff_id text, amount_cents bigint, payment_method text, checkpoint_id text))
               WITH ORDINALITY AS x(
                   type, request_id, payload_sha256, kiosk_id, seq, card_uid, source, trace_id,
                   items, total_cents, staff_id, amount_cents, payment_method, checkpoint_id,
                   position)
          JOIN unnest(v_outcomes, v_flags) WITH ORDINALITY AS o(outcome, flag, position)
            USING (position)
    ), fresh AS (
        SELECT * FROM input WHERE flag = 'new'
    ), approved AS (
        SELECT f.*, (f.outcome ->> 'transaction_id')::uuid AS transaction_id,
               (f.outcome ->> 'new_balance_cents')::bigint AS new_balance_cents,
               CASE f.type WHEN 'bar_order' THEN -f.total_cents ELSE f.amount_cents END
                   AS delta_cents,
               CASE f.type
                   WHEN 'bar_order' THEN 'sales:' || f.kiosk_id
                   ELSE CASE f.payment_method WHEN 'cash' THEN 'cash:' ELSE 'terminal:' END
                        || coalesce(f.checkpoint_id, f.kiosk_id)
               END AS counter_account
          FROM fresh f WHERE f.outcome ->> 'status' = 'approved'
    ), claims AS (
        INSERT INTO processed_requests (
            request_id, payload_sha256, kiosk_id, source, kind, status, error_code,
            transaction_id, outcome, created_at)
        SELECT f.request_id, decode(f.payload_sha256, 'hex'), f.kiosk_id, f.source, f.type,
               f.outcome ->> 'status', f.outcome ->> 'error_code',
               (f.outcome ->> 'transaction_id')::uuid, f.outcome, v_started
          FROM fresh f
        ON CONFLICT (request_id) DO NOTHING
        RETURNING 1
    ), balances AS (
        UPDATE cards k SET balance_cents = u.balance_cents, updated_at = v_started
          FROM unnest(c_uid, c_balance, c_dirty) AS u(card_uid, balance_cents, dirty)
         WHERE u.dirty AND k.card_uid = u.card_uid
        RETURNING 1
    ), ledger_transactions AS (
        INSERT INTO transactions (transaction_id, kind, request_id, created_at)
        SELECT a.transaction_id, a.type, a.request_id, v_started FROM approved a
        RETURNING 1
    ), ledger_postings AS (
        INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
        SELECT a.transaction_id, p.account_id, p.amount_cents, p.balance_after_cents
          FROM approved a
          JOIN cards c ON c.card_uid = a.card_uid
          JOIN accounts s ON s.name = a.counter_account
         CROSS JOIN LATERAL (VALUES
              (c.account_id, a.delta_cents, a.new_balance_cents),
              (s.account_id, -a.delta_cents, NULL::bigint))
              AS p(account_id, amount_cents, balance_after_cents)
        RETURNING 1
    ), orders AS (
        INSERT INTO bar_orders (
            order_id, transaction_id, client_request_id, card_id, kiosk_id, staff_id,
            total_cents, source, created_at)
        SELECT (a.outcome ->> 'order_id')::uuid, a.transaction_id, a.request_id, a.card_uid,
               a.kiosk_id, a.staff_id, a.total_cents, a.source, v_started
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
               a.source, v_started
          FROM approved a WHERE a.type = 'checkpoint_recharge'
        RETURNING 1
    ), audit AS (
        INSERT INTO app_transaction_log (
            card_id, transaction_type, status, amount_cents, previous_balance_cents,
            new_balance_cents, error_code, details, edge_function_name, client_request_id,
            transaction_id, kiosk_id, trace_id, "timestamp", created_at, updated_at)
        SELECT i.card_uid, i.type,
               CASE i.flag WHEN 'replayed' THEN 'replayed' ELSE i.outcome ->> 'status' END,
               coalesce(i.total_cents, i.amount_cents),
               (i.outcome ->> 'previous_balance_cents')::bigint,
               (i.outcome ->> 'new_balance_cents')::bigint, i.outcome ->> 'error_code',
               jsonb_build_object('source', i.source, 'seq', i.seq,
                                  'replayed', i.flag = 'replayed'),
               i.edge, i.request_id,
               CASE WHEN i.flag = 'new' THEN (i.outcome ->> 'transaction_id')::uuid END,
               i.kiosk_id, i.trace_id, v_started, v_started, clock_timestamp()
          FROM input i
        RETURNING 1
    ), cache AS (
        INSERT INTO idempotency_keys (
            request_id, source_function, status, response_payload, created_at, updated_at,
            expires_at)
        SELECT f.request_id, f.edge, f.outcome ->> 'status', f.outcome, v_started,
               clock_timestamp(), v_started + interval '24 hours'
          FROM fresh f
        ON CONFLICT (request_id) DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM claims),
           -- The items must add up to what the card was charged (checked in Python and here).
           (SELECT count(*)
              FROM approved a
              LEFT JOIN (SELECT l.order_id, sum(l.line_total_cents) AS total_cents
                           FROM order_lines l GROUP BY l.order_id) l
                     ON l.order_id = (a.outcome ->> 'order_id')::uuid
             WHERE a.type = 'bar_order' AND coalesce(l.total_cents, 0) <> a.total_cents),
           seqs.kiosk_ids, seqs.seqs
      INTO v_claimed, v_bad_totals, v_kiosks, v_seqs
      FROM (SELECT array_agg(f.kiosk_id ORDER BY f.position) AS kiosk_ids,
                   array_agg(f.seq ORDER BY f.position) AS seqs
              FROM fresh f WHERE f.source = 'mqtt' AND f.seq IS NOT NULL) seqs;

    IF v_claimed <> v_new_count THEN
        RAISE EXCEPTION 'a request_id of this batch was claimed by a concurrent transaction; retry'
            USING ERRCODE = 'serialization_failure';
    END IF;
    IF v_bad_totals > 0 THEN
        RAISE EXCEPTION 'a bar order''s total_cents is not the sum of its items'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 7. Seq tracking, last: kiosk rows come after cards and claims in the lock order.
    IF cardinality(v_kiosks) > 0 THEN
        PERFORM ledger_track_seqs(v_kiosks, v_seqs, v_started);
    END IF;

    RETURN to_jsonb(v_outcomes);
END
$$;

CREATE FUNCTION sp_process_batch(
    p_requests jsonb,
    p_balance_cents_max bigint DEFAULT 150000,
    p_topup_cents_max bigint DEFAULT 100000)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(p_requests, p_balance_cents_max, p_topup_cents_max)
$$;

-- One bar order (the seed's procedure name). p_items: [{name, quantity, unit_price_cents, sku,
-- is_deposit, is_return}]; p_total_cents may be negative (returns only): then the card is credited.
CREATE FUNCTION sp_process_bar_order(
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
    p_balance_cents_max bigint DEFAULT 150000)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(jsonb_build_object(
            'type', 'bar_order', 'request_id', p_request_id, 'card_uid', p_card_uid,
            'items', p_items, 'total_cents', p_total_cents, 'payload_sha256', p_payload_sha256,
            'kiosk_id', p_kiosk_id, 'seq', p_seq, 'staff_id', p_staff_id, 'source', p_source,
            'trace_id', p_trace_id)),
        p_balance_cents_max, 1) -> 0
$$;

-- One cash or card top-up at a checkpoint (the seed's procedure name). An unknown card is created.
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
    p_balance_cents_max bigint DEFAULT 150000,
    p_topup_cents_max bigint DEFAULT 100000)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(jsonb_build_object(
            'type', 'checkpoint_recharge', 'request_id', p_request_id, 'card_uid', p_card_uid,
            'amount_cents', p_amount_cents, 'payment_method', p_payment_method,
            'staff_id', p_staff_id, 'payload_sha256', p_payload_sha256, 'kiosk_id', p_kiosk_id,
            'seq', p_seq, 'checkpoint_id', p_checkpoint_id, 'source', p_source,
            'trace_id', p_trace_id)),
        p_balance_cents_max, p_topup_cents_max) -> 0
$$;

REVOKE EXECUTE ON FUNCTION ledger_process_requests(jsonb, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_process_bar_order(
    text, text, jsonb, bigint, text, text, bigint, text, text, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint) TO festival_service;
GRANT EXECUTE ON FUNCTION sp_process_bar_order(
    text, text, jsonb, bigint, text, text, bigint, text, text, text, bigint)
    TO festival_service;

-- 7. Dead letters: revision 0002's entry point, unbounded again.
DROP FUNCTION cleanup_expired_dead_letters();
DROP FUNCTION sp_record_dead_letters(jsonb, integer);
CREATE OR REPLACE FUNCTION sp_record_dead_letter(
    p_topic text, p_payload bytea, p_error_code text, p_reason text, p_kiosk_id text)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    INSERT INTO dead_letters (topic, payload, error_code, reason, kiosk_id)
    VALUES (left(p_topic, 512), p_payload, left(p_error_code, 64), left(p_reason, 1000),
            left(p_kiosk_id, 64))
    RETURNING id
$$;

DROP FUNCTION ledger_store_dead_letter(text, bytea, bigint, bytea, text, text, text, integer);
DROP TABLE dead_letter_counts;
ALTER TABLE dead_letters
    DROP CONSTRAINT dead_letters_payload_sha256_check,
    DROP CONSTRAINT dead_letters_payload_bounded,
    DROP COLUMN payload_sha256,
    DROP COLUMN payload_length;

-- 2. Kiosks are their own checkpoint again (the column goes).
DROP FUNCTION sp_set_kiosk_checkpoint(text, text);
DROP TRIGGER kiosks_default_checkpoint ON kiosks;
DROP FUNCTION trg_kiosk_default_checkpoint();
ALTER TABLE kiosks DROP COLUMN checkpoint_id;

-- 1. The deposit account's cache goes; the account is parked as 'sales:deposit:cups'.
DROP TABLE deposit_balances;
UPDATE accounts SET kind = 'sales', name = 'sales:deposit:cups' WHERE name = 'deposit:cups';
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall'));
