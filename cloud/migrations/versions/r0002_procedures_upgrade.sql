-- Revision 0002: the stored procedures. Every money movement happens inside one of these.
--
-- Naming: sp_* and cleanup_expired_idempotency_keys() and ledger_check() are the public entry
-- points (SECURITY DEFINER with a pinned search_path, EXECUTE granted to festival_service);
-- ledger_* are internal helpers (no EXECUTE for anyone but the owner).
--
-- Lock order, the same in every procedure, so that concurrent callers cannot deadlock:
--   top-up row (Stripe) -> card rows in card_uid order -> request claims -> kiosk rows in
--   kiosk_id order.
--
-- A business decline is an outcome (jsonb), never an exception. Exceptions mean a bug in the
-- caller (invalid_parameter_value) or a transient fault (serialization_failure: retry).

-- ---------------------------------------------------------------------------------------------
-- Helpers

-- A time-ordered UUID (version 7 layout; PostgreSQL 18's uuidv7() is not in 15). Ordered ids keep
-- the primary-key indexes append-only: measurably less WAL and faster inserts than random ones.
CREATE FUNCTION ledger_uuid7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
            PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
            FROM 1 FOR 6), 52, 1), 53, 1),
        'hex')::uuid
$$;

CREATE FUNCTION ledger_ms(p_at timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (extract(epoch FROM p_at) * 1000)::bigint
$$;

-- The card row, locked; created (with its ledger account) when it does not exist yet.
CREATE FUNCTION ledger_open_card(p_card_uid text) RETURNS cards
LANGUAGE plpgsql AS $$
DECLARE
    v_card cards;
    v_account_id bigint;
BEGIN
    SELECT * INTO v_card FROM cards WHERE card_uid = p_card_uid FOR UPDATE;
    IF FOUND THEN
        RETURN v_card;
    END IF;
    INSERT INTO accounts (kind, name) VALUES ('card', 'card:' || p_card_uid)
    ON CONFLICT (name) DO NOTHING
    RETURNING account_id INTO v_account_id;
    IF v_account_id IS NULL THEN
        SELECT account_id INTO STRICT v_account_id FROM accounts WHERE name = 'card:' || p_card_uid;
    END IF;
    INSERT INTO cards (card_uid, account_id) VALUES (p_card_uid, v_account_id)
    ON CONFLICT (card_uid) DO NOTHING;
    SELECT * INTO STRICT v_card FROM cards WHERE card_uid = p_card_uid FOR UPDATE;
    RETURN v_card;
END
$$;

-- The id of a system account ('sales:bar-1', 'stripe:clearing', ...), created when missing.
CREATE FUNCTION ledger_system_account(p_name text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_account_id bigint;
BEGIN
    SELECT account_id INTO v_account_id FROM accounts WHERE name = p_name;
    IF NOT FOUND THEN
        INSERT INTO accounts (kind, name) VALUES (split_part(p_name, ':', 1), p_name)
        ON CONFLICT (name) DO NOTHING;
        SELECT account_id INTO STRICT v_account_id FROM accounts WHERE name = p_name;
    END IF;
    RETURN v_account_id;
END
$$;

-- Record that kiosks sent these seq values (each kiosk's set of seen seqs is a multirange; the
-- gaps are what went missing). Kiosk rows are locked last, in kiosk_id order.
CREATE FUNCTION ledger_track_seqs(p_kiosk_ids text[], p_seqs bigint[], p_at timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (p_kiosk_ids[1] = ALL (p_kiosk_ids)) THEN
        PERFORM 1 FROM kiosks k WHERE k.kiosk_id = ANY (p_kiosk_ids) ORDER BY k.kiosk_id FOR UPDATE;
    END IF;
    UPDATE kiosks k
       SET seen_seqs = k.seen_seqs + s.seqs,
           last_seen_at = greatest(k.last_seen_at, p_at)
      FROM (SELECT u.kiosk_id, range_agg(int8range(u.seq, u.seq, '[]')) AS seqs
              FROM unnest(p_kiosk_ids, p_seqs) AS u(kiosk_id, seq)
             -- the largest bigint has no successor to close its range with
             WHERE u.seq BETWEEN 1 AND 9223372036854775806
             GROUP BY u.kiosk_id) s
     WHERE k.kiosk_id = s.kiosk_id;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Kiosk and HTTP requests: bar orders and checkpoint top-ups, in batches.
--
-- p_requests is a JSON array of objects:
--   common: type ('bar_order' | 'checkpoint_recharge'), request_id, payload_sha256 (hex),
--           kiosk_id, seq, card_uid, source ('mqtt' | 'http'), trace_id
--   bar_order: items (array of {name, quantity, unit_price_cents, sku, is_deposit, is_return}),
--              total_cents, staff_id
--   checkpoint_recharge: amount_cents, payment_method ('cash' | 'card'), staff_id, checkpoint_id
-- Returns a JSON array of outcomes, in input order. All requests share one transaction and one
-- round trip; each keeps its own idempotency (a request_id repeated inside the batch is a replay
-- of its first occurrence) and its own outcome.
--
-- How it stays exactly-once without a check-then-insert window: cards are locked first; the
-- existing claims are read under those locks; every outcome is decided in memory; then all new
-- claims are inserted with ON CONFLICT DO NOTHING. The unique key is the arbiter: if any claim
-- was taken meanwhile by a concurrent transaction (possible only for a request_id reused on
-- another card), the insert reports fewer rows and the whole batch fails with
-- serialization_failure, which callers retry - and the retry sees the committed claim.
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
CREATE FUNCTION sp_process_checkpoint_recharge(
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

-- An authenticated request rejected before the ledger (disabled kiosk, wrong role, stale, invalid
-- content of a signed message): stored forever under its request_id like any other outcome.
CREATE FUNCTION sp_record_rejection(
    p_request_id text,
    p_kiosk_id text,
    p_seq bigint,
    p_card_uid text,
    p_payload_sha256 text,
    p_error_code text,
    p_message text,
    p_source text DEFAULT 'mqtt',
    p_kind text DEFAULT NULL,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_sha bytea;
    v_outcome jsonb;
    v_existing processed_requests;
    v_status text;
    v_edge text;
BEGIN
    IF p_error_code IS NULL OR p_error_code NOT IN (
            'KIOSK_DISABLED', 'OPERATION_NOT_ALLOWED', 'STALE_REQUEST', 'INVALID_REQUEST') THEN
        RAISE EXCEPTION 'only KIOSK_DISABLED, OPERATION_NOT_ALLOWED, STALE_REQUEST and INVALID_REQUEST are recorded as rejections, not %',
            left(coalesce(p_error_code, 'null'), 32)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_request_id IS NULL OR NOT coalesce(p_payload_sha256 ~ '^[0-9a-fA-F]{64}$', false)
       OR p_source IS NULL OR p_source NOT IN ('mqtt', 'http') THEN
        RAISE EXCEPTION 'a rejection needs a request_id, a hex payload_sha256 and a source'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_kind IS NOT NULL AND p_kind NOT IN ('bar_order', 'checkpoint_recharge') THEN
        p_kind := NULL;
    END IF;
    v_sha := decode(p_payload_sha256, 'hex');
    v_edge := CASE p_kind
        WHEN 'bar_order' THEN 'process-bar-order'
        WHEN 'checkpoint_recharge' THEN 'process-checkpoint-recharge'
        ELSE 'mqtt-consumer' END;
    v_outcome := jsonb_build_object(
        'request_id', p_request_id, 'status', 'rejected', 'error_code', p_error_code,
        'message', left(coalesce(p_message, p_error_code), 200), 'transaction_id', NULL,
        'previous_balance_cents', NULL, 'new_balance_cents', NULL, 'replayed', false,
        'processed_at_ms', ledger_ms(v_started), 'order_id', NULL, 'card_uid', p_card_uid);

    INSERT INTO processed_requests (
        request_id, payload_sha256, kiosk_id, source, kind, status, error_code, transaction_id,
        outcome, created_at)
    VALUES (p_request_id, v_sha, p_kiosk_id, p_source, p_kind, 'rejected', p_error_code, NULL,
            v_outcome, v_started)
    ON CONFLICT (request_id) DO NOTHING;
    IF FOUND THEN
        v_status := 'rejected';
        INSERT INTO idempotency_keys (
            request_id, source_function, status, response_payload, created_at, updated_at,
            expires_at)
        VALUES (p_request_id, v_edge, 'rejected', v_outcome, v_started, clock_timestamp(),
                v_started + interval '24 hours')
        ON CONFLICT (request_id) DO NOTHING;
        IF p_source = 'mqtt' AND p_seq IS NOT NULL AND p_kiosk_id IS NOT NULL THEN
            PERFORM ledger_track_seqs(ARRAY[p_kiosk_id], ARRAY[p_seq], v_started);
        END IF;
    ELSE
        SELECT * INTO STRICT v_existing FROM processed_requests WHERE request_id = p_request_id;
        IF v_existing.payload_sha256 = v_sha THEN
            v_outcome := v_existing.outcome || '{"replayed": true}';
            v_status := 'replayed';
        ELSE
            v_outcome := v_outcome || jsonb_build_object(
                'error_code', 'IDEMPOTENCY_CONFLICT',
                'message', 'Request id already used for a different request');
            v_status := 'rejected';
        END IF;
    END IF;

    INSERT INTO app_transaction_log (
        card_id, transaction_type, status, amount_cents, error_code, details,
        edge_function_name, client_request_id, kiosk_id, trace_id, "timestamp", created_at,
        updated_at)
    VALUES (p_card_uid, coalesce(p_kind, 'unknown'), v_status, NULL, v_outcome ->> 'error_code',
            jsonb_build_object('source', p_source, 'seq', p_seq,
                               'replayed', v_status = 'replayed'),
            v_edge, p_request_id, p_kiosk_id, p_trace_id, v_started, v_started,
            clock_timestamp());
    RETURN v_outcome;
END
$$;

CREATE FUNCTION sp_record_dead_letter(
    p_topic text, p_payload bytea, p_error_code text, p_reason text, p_kiosk_id text)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    INSERT INTO dead_letters (topic, payload, error_code, reason, kiosk_id)
    VALUES (left(p_topic, 512), p_payload, left(p_error_code, 64), left(p_reason, 1000),
            left(p_kiosk_id, 64))
    RETURNING id
$$;

-- ---------------------------------------------------------------------------------------------
-- Kiosks

CREATE FUNCTION sp_add_kiosk(p_kiosk_id text, p_public_key_b64 text, p_role text)
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    INSERT INTO kiosks (kiosk_id, public_key_b64, role)
    VALUES (p_kiosk_id, p_public_key_b64, p_role)
    ON CONFLICT (kiosk_id) DO UPDATE
       SET public_key_b64 = EXCLUDED.public_key_b64, role = EXCLUDED.role, enabled = true,
           disabled_at = NULL, updated_at = now()
    RETURNING jsonb_build_object('kiosk_id', kiosk_id, 'public_key_b64', public_key_b64,
                                 'role', role, 'enabled', enabled)
$$;

CREATE FUNCTION sp_disable_kiosk(p_kiosk_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE kiosks SET enabled = false, disabled_at = coalesce(disabled_at, now()),
                      updated_at = now()
     WHERE kiosk_id = p_kiosk_id;
    RETURN FOUND;
END
$$;

-- A retained status message. Older news than what we have (a retained message replayed after a
-- reconnect) changes nothing.
CREATE FUNCTION sp_record_kiosk_status(
    p_kiosk_id text, p_state text, p_at_ms bigint, p_firmware text, p_received_at_ms bigint)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_at timestamptz := to_timestamp(p_at_ms / 1000.0);
BEGIN
    IF p_state IS NULL OR p_state NOT IN ('online', 'offline') THEN
        RAISE EXCEPTION 'state must be online or offline' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE kiosks
       SET state = p_state, state_at = v_at, firmware = left(p_firmware, 64),
           last_seen_at = greatest(last_seen_at, to_timestamp(p_received_at_ms / 1000.0))
     WHERE kiosk_id = p_kiosk_id AND (state_at IS NULL OR state_at <= v_at);
    RETURN FOUND;
END
$$;

-- Scan records: [{kiosk_id, card_uid, status, scanned_at_ms, reader, duration_ms}]
CREATE FUNCTION sp_record_scans(p_scans jsonb) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_count integer;
BEGIN
    INSERT INTO nfc_scan_log (kiosk_id, card_id, scan_status, scan_timestamp, reader, duration_ms)
    SELECT x.kiosk_id, x.card_uid, x.status, to_timestamp(x.scanned_at_ms / 1000.0),
           left(x.reader, 64), x.duration_ms
      FROM jsonb_to_recordset(p_scans) AS x(
               kiosk_id text, card_uid text, status text, scanned_at_ms bigint, reader text,
               duration_ms integer);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Cards

CREATE FUNCTION sp_block_card(p_card_uid text, p_reason text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_card cards;
BEGIN
    UPDATE cards SET status = 'blocked', blocked_reason = left(p_reason, 200),
                     updated_at = v_started
     WHERE card_uid = p_card_uid
    RETURNING * INTO v_card;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO app_transaction_log (
        card_id, transaction_type, status, previous_balance_cents, new_balance_cents, details,
        edge_function_name, "timestamp", created_at, updated_at)
    VALUES (p_card_uid, 'card_block', 'approved', v_card.balance_cents, v_card.balance_cents,
            jsonb_build_object('reason', left(p_reason, 200)), 'admin', v_started, v_started,
            clock_timestamp());
    RETURN true;
END
$$;

CREATE FUNCTION sp_unblock_card(p_card_uid text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_card cards;
BEGIN
    UPDATE cards SET status = 'active', blocked_reason = NULL, updated_at = v_started
     WHERE card_uid = p_card_uid
    RETURNING * INTO v_card;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO app_transaction_log (
        card_id, transaction_type, status, previous_balance_cents, new_balance_cents,
        edge_function_name, "timestamp", created_at, updated_at)
    VALUES (p_card_uid, 'card_unblock', 'approved', v_card.balance_cents, v_card.balance_cents,
            'admin', v_started, v_started, clock_timestamp());
    RETURN true;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Stripe

-- False when this event id was already stored. Storing it is not processing it: the sp_*
-- procedures below are idempotent by their own keys and may be called for a duplicate too.
CREATE FUNCTION sp_record_stripe_event(p_event_id text, p_event_type text, p_payload jsonb)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO stripe_events (event_id, event_type, payload)
    VALUES (p_event_id, p_event_type, p_payload)
    ON CONFLICT (event_id) DO NOTHING;
    IF FOUND THEN
        RETURN true;
    END IF;
    -- A procedure may have stored the bare id first; keep the payload once it comes.
    UPDATE stripe_events SET event_type = coalesce(event_type, p_event_type),
                             payload = coalesce(payload, p_payload)
     WHERE event_id = p_event_id AND payload IS NULL;
    RETURN false;
END
$$;

CREATE FUNCTION sp_create_topup(
    p_topup_id text, p_card_uid text, p_amount_cents bigint, p_currency text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF p_card_uid IS NULL OR p_card_uid !~ '^([0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$' THEN
        RAISE EXCEPTION 'invalid card uid' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO topups (topup_id, card_uid, amount_cents, currency)
    VALUES (p_topup_id, p_card_uid, p_amount_cents, upper(p_currency))
    ON CONFLICT (topup_id) DO NOTHING;
    RETURN FOUND;
END
$$;

CREATE FUNCTION sp_attach_checkout_session(p_topup_id text, p_session_id text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE topups
       SET session_id = p_session_id,
           status = CASE WHEN status = 'pending' THEN 'open' ELSE status END,
           updated_at = now()
     WHERE topup_id = p_topup_id AND (session_id IS NULL OR session_id = p_session_id);
    RETURN FOUND;
END
$$;

-- The top-up row of a Checkout Session, locked; created when the session is unknown (paid
-- through a session we did not record: money is never dropped).
CREATE FUNCTION ledger_lock_topup(
    p_session_id text, p_topup_id text, p_card_uid text, p_amount_cents bigint,
    p_currency text)
RETURNS topups
LANGUAGE plpgsql AS $$
DECLARE
    v_topup topups;
    v_topup_id text;
BEGIN
    SELECT * INTO v_topup FROM topups WHERE session_id = p_session_id FOR UPDATE;
    IF FOUND THEN
        RETURN v_topup;
    END IF;
    IF p_topup_id IS NOT NULL THEN
        -- The webhook may overtake attach_checkout_session.
        UPDATE topups SET session_id = p_session_id,
                          status = CASE WHEN status = 'pending' THEN 'open' ELSE status END,
                          updated_at = now()
         WHERE topup_id = p_topup_id AND session_id IS NULL
        RETURNING * INTO v_topup;
        IF FOUND THEN
            RETURN v_topup;
        END IF;
    END IF;
    v_topup_id := p_topup_id;
    IF v_topup_id IS NULL OR EXISTS (SELECT 1 FROM topups WHERE topup_id = v_topup_id) THEN
        v_topup_id := 'session:' || p_session_id;
    END IF;
    INSERT INTO topups (topup_id, session_id, card_uid, amount_cents, currency, status)
    VALUES (v_topup_id, p_session_id, p_card_uid, p_amount_cents, upper(p_currency), 'open')
    ON CONFLICT DO NOTHING;
    SELECT * INTO STRICT v_topup FROM topups WHERE session_id = p_session_id FOR UPDATE;
    RETURN v_topup;
END
$$;

CREATE FUNCTION ledger_stripe_log(
    p_started timestamptz, p_type text, p_status text, p_card_uid text, p_amount_cents bigint,
    p_outcome jsonb, p_event_id text, p_key text, p_trace_id text)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO app_transaction_log (
        card_id, transaction_type, status, amount_cents, previous_balance_cents,
        new_balance_cents, error_code, details, edge_function_name, client_request_id,
        transaction_id, trace_id, "timestamp", created_at, updated_at)
    VALUES (p_card_uid, p_type, p_status, p_amount_cents,
            (p_outcome ->> 'previous_balance_cents')::bigint,
            (p_outcome ->> 'new_balance_cents')::bigint, p_outcome ->> 'error_code',
            jsonb_build_object('event_id', p_event_id, 'message', p_outcome ->> 'message',
                               'replayed', (p_outcome ->> 'replayed')::boolean),
            'stripe-webhook', p_key, (p_outcome ->> 'transaction_id')::uuid, p_trace_id,
            p_started, p_started, clock_timestamp());
    UPDATE stripe_events SET processed_at = coalesce(processed_at, now()),
                             outcome = coalesce(outcome, p_outcome)
     WHERE event_id = p_event_id;
$$;

-- Credit a paid Checkout Session to its card, once per session forever.
-- Decisions (docs/ledger.md): a session paid in another currency is an anomaly (recorded, not
-- credited, to be refunded); online top-ups respect the maximum balance (a session that would
-- exceed it is declined BALANCE_LIMIT_EXCEEDED and recorded for a refund); a blocked card is
-- still credited (the money is the attendee's; blocking only stops spending).
CREATE FUNCTION sp_process_stripe_recharge(
    p_event_id text,
    p_session_id text,
    p_card_uid text,
    p_amount_cents bigint,
    p_currency text,
    p_payment_intent_id text DEFAULT NULL,
    p_topup_id text DEFAULT NULL,
    p_expected_currency text DEFAULT 'EUR',
    p_balance_cents_max bigint DEFAULT 150000,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_topup topups;
    v_card cards;
    v_card_uid text;
    v_tx uuid;
    v_code text;
    v_status text;
    v_topup_status text;
    v_previous bigint;
    v_new bigint;
    v_message text;
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_session_id IS NULL OR p_amount_cents IS NULL
       OR p_amount_cents < 1 OR p_currency IS NULL THEN
        RAISE EXCEPTION 'a Stripe recharge needs event id, session id, amount >= 1 and currency'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    v_topup := ledger_lock_topup(p_session_id, p_topup_id, p_card_uid, p_amount_cents,
                                 p_currency);
    -- Our own record names the card; the event's metadata only for sessions we never created.
    v_card_uid := v_topup.card_uid;

    IF v_topup.status IN ('credited', 'declined', 'anomaly') THEN
        v_outcome := v_topup.outcome || '{"replayed": true}';
        PERFORM ledger_stripe_log(v_started, 'stripe_recharge', 'replayed', v_card_uid,
                                  p_amount_cents, v_outcome, p_event_id, p_session_id,
                                  p_trace_id);
        RETURN v_outcome;
    END IF;

    IF upper(p_currency) <> upper(p_expected_currency) THEN
        v_status := 'rejected';
        v_code := 'INVALID_REQUEST';
        v_topup_status := 'anomaly';
        v_message := format('Paid in %s, not %s: recorded for a refund',
                            upper(left(p_currency, 3)), upper(p_expected_currency));
    ELSE
        v_card := ledger_open_card(v_card_uid);
        v_previous := v_card.balance_cents;
        v_new := v_previous;
        IF v_previous + p_amount_cents > p_balance_cents_max THEN
            v_status := 'declined';
            v_code := 'BALANCE_LIMIT_EXCEEDED';
            v_topup_status := 'declined';
            v_message := 'Balance limit exceeded: recorded for a refund';
        ELSE
            v_status := 'approved';
            v_topup_status := 'credited';
            v_message := 'Topped up';
            v_tx := ledger_uuid7();
            v_new := v_previous + p_amount_cents;
            UPDATE cards SET balance_cents = v_new, updated_at = v_started
             WHERE card_uid = v_card_uid;
            INSERT INTO transactions (transaction_id, kind, stripe_event_id, topup_id, created_at)
            VALUES (v_tx, 'stripe_recharge', p_event_id, v_topup.topup_id, v_started);
            INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
            VALUES (v_tx, v_card.account_id, p_amount_cents, v_new),
                   (v_tx, ledger_system_account('stripe:clearing'), -p_amount_cents, NULL);
            INSERT INTO recharges (
                recharge_id, transaction_id, card_id, amount_cents, payment_method,
                stripe_session_id, stripe_payment_intent_id, source, created_at)
            VALUES (ledger_uuid7(), v_tx, v_card_uid, p_amount_cents, 'stripe', p_session_id,
                    p_payment_intent_id, 'stripe', v_started);
        END IF;
    END IF;

    v_outcome := jsonb_build_object(
        'request_id', p_session_id, 'status', v_status, 'error_code', v_code,
        'message', v_message, 'transaction_id', v_tx, 'previous_balance_cents', v_previous,
        'new_balance_cents', v_new, 'replayed', false,
        'processed_at_ms', ledger_ms(v_started), 'order_id', NULL, 'card_uid', v_card_uid);
    UPDATE topups
       SET status = v_topup_status, outcome = v_outcome, transaction_id = v_tx,
           credited_cents = CASE WHEN v_tx IS NULL THEN 0 ELSE p_amount_cents END,
           payment_intent_id = coalesce(p_payment_intent_id, payment_intent_id),
           updated_at = v_started
     WHERE topup_id = v_topup.topup_id;
    INSERT INTO idempotency_keys (
        request_id, source_function, status, response_payload, created_at, updated_at,
        expires_at)
    VALUES ('stripe:' || p_session_id, 'stripe-webhook', v_status, v_outcome, v_started,
            clock_timestamp(), v_started + interval '24 hours')
    ON CONFLICT (request_id) DO NOTHING;
    PERFORM ledger_stripe_log(v_started, 'stripe_recharge',
                              CASE WHEN v_topup_status = 'anomaly' THEN 'anomaly'
                                   ELSE v_status END,
                              v_card_uid, p_amount_cents, v_outcome, p_event_id, p_session_id,
                              p_trace_id);
    RETURN v_outcome;
END
$$;

CREATE FUNCTION sp_mark_topup_failed(p_session_id text, p_event_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_changed boolean;
BEGIN
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    UPDATE topups SET status = 'failed', updated_at = now()
     WHERE session_id = p_session_id AND status IN ('pending', 'open');
    v_changed := FOUND;
    UPDATE stripe_events SET processed_at = coalesce(processed_at, now())
     WHERE event_id = p_event_id;
    RETURN v_changed;
END
$$;

-- charge.refunded: p_amount_refunded_cents is Stripe's cumulative amount_refunded. The card loses
-- the part not yet reversed; what its balance cannot cover is booked to the refund shortfall
-- account and the card is blocked. Never fails for a business reason.
CREATE FUNCTION sp_process_stripe_refund(
    p_event_id text, p_payment_intent_id text, p_amount_refunded_cents bigint,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_topup topups;
    v_card cards;
    v_target bigint;
    v_delta bigint;
    v_take bigint;
    v_shortfall bigint;
    v_new bigint;
    v_tx uuid;
    v_message text;
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_payment_intent_id IS NULL OR p_amount_refunded_cents IS NULL
       OR p_amount_refunded_cents < 0 THEN
        RAISE EXCEPTION 'a refund needs event id, payment intent and amount_refunded >= 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    SELECT * INTO v_topup FROM topups WHERE payment_intent_id = p_payment_intent_id
     ORDER BY created_at LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        v_outcome := jsonb_build_object(
            'request_id', p_event_id, 'status', 'rejected', 'error_code', 'INVALID_REQUEST',
            'message', 'Unknown payment intent: nothing to reverse', 'transaction_id', NULL,
            'previous_balance_cents', NULL, 'new_balance_cents', NULL, 'replayed', false,
            'processed_at_ms', ledger_ms(v_started), 'order_id', NULL, 'card_uid', NULL);
        PERFORM ledger_stripe_log(v_started, 'stripe_refund', 'rejected', NULL,
                                  p_amount_refunded_cents, v_outcome, p_event_id,
                                  p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;

    -- Only what was credited can be taken back.
    v_target := least(p_amount_refunded_cents, v_topup.credited_cents);
    v_delta := v_target - v_topup.refunded_cents;
    SELECT * INTO v_card FROM cards WHERE card_uid = v_topup.card_uid FOR UPDATE;
    IF v_delta <= 0 THEN
        v_outcome := jsonb_build_object(
            'request_id', p_event_id, 'status', 'approved', 'error_code', NULL,
            'message', CASE WHEN v_topup.credited_cents = 0
                            THEN 'Top-up was never credited: nothing to take back'
                            ELSE 'Refund already applied' END,
            'transaction_id', NULL, 'previous_balance_cents', v_card.balance_cents,
            'new_balance_cents', v_card.balance_cents,
            'replayed', v_topup.credited_cents > 0,
            'processed_at_ms', ledger_ms(v_started), 'order_id', NULL,
            'card_uid', v_topup.card_uid);
        PERFORM ledger_stripe_log(v_started, 'stripe_refund',
                                  CASE WHEN v_topup.credited_cents > 0 THEN 'replayed'
                                       ELSE 'approved' END,
                                  v_topup.card_uid, 0, v_outcome, p_event_id,
                                  p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;

    v_take := least(v_delta, v_card.balance_cents);
    v_shortfall := v_delta - v_take;
    v_new := v_card.balance_cents - v_take;
    v_tx := ledger_uuid7();
    UPDATE cards
       SET balance_cents = v_new,
           status = CASE WHEN v_shortfall > 0 THEN 'blocked' ELSE status END,
           blocked_reason = CASE WHEN v_shortfall > 0 THEN 'refund shortfall'
                                 ELSE blocked_reason END,
           updated_at = v_started
     WHERE card_uid = v_card.card_uid;
    INSERT INTO transactions (transaction_id, kind, stripe_event_id, topup_id, created_at)
    VALUES (v_tx, 'stripe_refund', p_event_id, v_topup.topup_id, v_started);
    INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
    SELECT * FROM (VALUES
        (v_tx, v_card.account_id, -v_take, v_new),
        (v_tx, ledger_system_account('stripe:clearing'), v_delta, NULL::bigint),
        (v_tx, ledger_system_account('shortfall:refunds'), -v_shortfall, NULL::bigint)) p
     WHERE p.column3 <> 0 OR p.column2 = v_card.account_id;
    UPDATE topups SET refunded_cents = refunded_cents + v_delta,
                      shortfall_cents = shortfall_cents + v_shortfall, updated_at = v_started
     WHERE topup_id = v_topup.topup_id;
    v_message := CASE WHEN v_shortfall > 0
        THEN format('Refunded %s cents; %s cents not covered by the balance: card blocked',
                    v_delta, v_shortfall)
        ELSE format('Refunded %s cents', v_delta) END;
    v_outcome := jsonb_build_object(
        'request_id', p_event_id, 'status', 'approved', 'error_code', NULL,
        'message', v_message, 'transaction_id', v_tx,
        'previous_balance_cents', v_card.balance_cents, 'new_balance_cents', v_new,
        'replayed', false, 'processed_at_ms', ledger_ms(v_started), 'order_id', NULL,
        'card_uid', v_card.card_uid);
    PERFORM ledger_stripe_log(v_started, 'stripe_refund', 'approved', v_card.card_uid, v_delta,
                              v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
    RETURN v_outcome;
END
$$;

-- charge.dispute.*: block the card of the disputed top-up.
CREATE FUNCTION sp_process_stripe_dispute(
    p_event_id text, p_payment_intent_id text, p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_topup topups;
    v_card cards;
    v_event stripe_events;
    v_outcome jsonb;
BEGIN
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    SELECT * INTO v_topup FROM topups WHERE payment_intent_id = p_payment_intent_id
     ORDER BY created_at LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        v_outcome := jsonb_build_object(
            'request_id', p_event_id, 'status', 'rejected', 'error_code', 'INVALID_REQUEST',
            'message', 'Unknown payment intent: no card to block', 'transaction_id', NULL,
            'previous_balance_cents', NULL, 'new_balance_cents', NULL, 'replayed', false,
            'processed_at_ms', ledger_ms(v_started), 'order_id', NULL, 'card_uid', NULL);
        PERFORM ledger_stripe_log(v_started, 'stripe_dispute', 'rejected', NULL, NULL,
                                  v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;
    SELECT * INTO STRICT v_event FROM stripe_events WHERE event_id = p_event_id FOR UPDATE;
    IF v_event.processed_at IS NOT NULL AND v_event.outcome IS NOT NULL THEN
        RETURN v_event.outcome || '{"replayed": true}';
    END IF;
    v_card := ledger_open_card(v_topup.card_uid);
    UPDATE cards SET status = 'blocked', blocked_reason = 'payment disputed',
                     updated_at = v_started
     WHERE card_uid = v_card.card_uid;
    v_outcome := jsonb_build_object(
        'request_id', p_event_id, 'status', 'approved', 'error_code', NULL,
        'message', 'Card blocked: payment disputed', 'transaction_id', NULL,
        'previous_balance_cents', v_card.balance_cents,
        'new_balance_cents', v_card.balance_cents, 'replayed', false,
        'processed_at_ms', ledger_ms(v_started), 'order_id', NULL,
        'card_uid', v_card.card_uid);
    PERFORM ledger_stripe_log(v_started, 'stripe_dispute', 'approved', v_card.card_uid, NULL,
                              v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
    RETURN v_outcome;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Maintenance and invariants

-- The seed's weekly cleanup. Deletes only the 24-hour response cache: processed_requests keeps
-- every request_id forever, so a deleted key never makes its request processable again.
CREATE FUNCTION cleanup_expired_idempotency_keys() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_deleted integer;
BEGIN
    DELETE FROM idempotency_keys WHERE expires_at <= now();
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

-- Every violation of the ledger's invariants, one readable line each (at most p_limit per kind).
CREATE FUNCTION ledger_check(p_limit integer DEFAULT 20) RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT format('transaction %s: its postings sum to %s cents, not 0', s.transaction_id, s.total)
      FROM (SELECT p.transaction_id, sum(p.amount_cents) AS total FROM postings p
             GROUP BY p.transaction_id HAVING sum(p.amount_cents) <> 0
             ORDER BY p.transaction_id LIMIT p_limit) s;

    RETURN QUERY
    SELECT format('transaction %s (%s) has no postings', t.transaction_id, t.kind)
      FROM transactions t
     WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.transaction_id = t.transaction_id)
     ORDER BY t.transaction_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('a posting of %s cents on account %s belongs to no transaction (%s)',
                  p.amount_cents, p.account_id, p.transaction_id)
      FROM postings p
     WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.transaction_id = p.transaction_id)
     LIMIT p_limit;

    RETURN QUERY
    SELECT format('a posting of transaction %s names unknown account %s',
                  p.transaction_id, p.account_id)
      FROM postings p
     WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.account_id = p.account_id)
     LIMIT p_limit;

    RETURN QUERY
    SELECT format('card %s: cached balance %s cents, but its postings sum to %s cents',
                  c.card_uid, c.balance_cents, coalesce(s.total, 0))
      FROM cards c
      LEFT JOIN (SELECT p.account_id, sum(p.amount_cents) AS total FROM postings p
                  GROUP BY p.account_id) s ON s.account_id = c.account_id
     WHERE c.balance_cents IS DISTINCT FROM coalesce(s.total, 0)
     ORDER BY c.card_uid LIMIT p_limit;

    RETURN QUERY
    SELECT format('card %s: negative balance %s cents', c.card_uid, c.balance_cents)
      FROM cards c WHERE c.balance_cents < 0
     ORDER BY c.card_uid LIMIT p_limit;

    RETURN QUERY
    SELECT format('card account %s: its postings sum to a negative balance of %s cents',
                  a.name, s.total)
      FROM accounts a
      JOIN (SELECT p.account_id, sum(p.amount_cents) AS total FROM postings p
             GROUP BY p.account_id) s ON s.account_id = a.account_id
     WHERE a.kind = 'card' AND s.total < 0
     ORDER BY a.name LIMIT p_limit;

    RETURN QUERY
    SELECT format('approved request %s has %s ledger transactions, expected exactly 1',
                  q.request_id, coalesce(n.transactions, 0))
      FROM processed_requests q
      LEFT JOIN (SELECT t.request_id, count(*) AS transactions FROM transactions t
                  WHERE t.request_id IS NOT NULL GROUP BY t.request_id) n
             ON n.request_id = q.request_id
     WHERE q.status = 'approved' AND coalesce(n.transactions, 0) <> 1
     ORDER BY q.request_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('transaction %s names request %s, which is not approved with this transaction',
                  t.transaction_id, t.request_id)
      FROM transactions t
     WHERE t.request_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM processed_requests q
                        WHERE q.request_id = t.request_id AND q.status = 'approved'
                          AND q.transaction_id = t.transaction_id)
     ORDER BY t.transaction_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('transaction %s has neither a request nor a Stripe event', t.transaction_id)
      FROM transactions t
     WHERE t.request_id IS NULL AND t.stripe_event_id IS NULL
     ORDER BY t.transaction_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('transaction %s names Stripe event %s, which is not recorded',
                  t.transaction_id, t.stripe_event_id)
      FROM transactions t
     WHERE t.request_id IS NULL AND t.stripe_event_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM stripe_events e WHERE e.event_id = t.stripe_event_id)
     ORDER BY t.transaction_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('credited top-up %s has no Stripe recharge transaction', u.topup_id)
      FROM topups u
     WHERE u.status = 'credited'
       AND NOT EXISTS (SELECT 1 FROM transactions t
                        WHERE t.transaction_id = u.transaction_id
                          AND t.kind = 'stripe_recharge')
     ORDER BY u.topup_id LIMIT p_limit;

    RETURN QUERY
    SELECT format('Stripe recharge transaction %s belongs to no credited top-up', t.transaction_id)
      FROM transactions t
     WHERE t.kind = 'stripe_recharge'
       AND NOT EXISTS (SELECT 1 FROM topups u
                        WHERE u.transaction_id = t.transaction_id AND u.status = 'credited')
     ORDER BY t.transaction_id LIMIT p_limit;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Privileges: PostgreSQL grants EXECUTE to PUBLIC on every new function. Take it back from all
-- of ours; give the service role exactly the entry points.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND (p.proname LIKE 'sp\_%' OR p.proname LIKE 'ledger\_%'
                OR p.proname = 'cleanup_expired_idempotency_keys')
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND (p.proname LIKE 'sp\_%' OR p.proname IN (
                    'cleanup_expired_idempotency_keys', 'ledger_check'))
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO festival_service', f);
    END LOOP;
END
$$;
