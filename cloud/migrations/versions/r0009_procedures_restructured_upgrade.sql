-- Revision 0009 (issue 12, section 2): the procedures of revisions 0002..0008 restructured, with
-- the same behaviour (the same outcomes, rows, locks and errors; docs/ledger.md, "How the
-- procedures are built").
--
--   * The batch (ledger_process_requests, behind sp_process_batch) is three steps: lock and read
--     what the batch touches; decide every request in order, in memory (ledger_decide_request,
--     one branch per request type: a new type adds a branch there); write every row in one
--     statement (ledger_write_requests).
--   * One helper each, called wherever the code built them by hand: the outcome object
--     (ledger_outcome), the app_transaction_log insert (ledger_log_entries; ledger_log for one
--     row), storing an outcome in the idempotency cache (ledger_cache_outcomes). New ids are
--     ledger_uuid7() everywhere.
--   * One card UID rule: the domain ledger_card_uid (the type of cards.card_uid from here on,
--     and what ledger_card_uid_valid tests).
--   * Every bound the procedures apply comes from one function, ledger_limit(name). The request
--     procedures' limit parameters default to it; the Python callers always pass their settings.
--   * The Stripe code copied between revisions is one body each: the card-metadata fallback of
--     refunds and disputes (revision 0003: ledger_stripe_metadata_fallback), taking money back
--     from a card for a refund or a lost dispute (0002 and 0006: ledger_take_back), and crediting
--     a paid Checkout Session (0002 and 0006: ledger_credit_from_stripe).
--   * sp_handle_request(request jsonb, limits): one kiosk or POS request in the protocol's own
--     JSON form (protocol.models.request_to_dict, plus payload_sha256, source and trace_id),
--     what Ledger.apply calls; sp_process_batch takes an array of the same objects. The seed's
--     procedures keep their names and signatures (sp_process_bar_order etc.).
--
-- Lock order: unchanged (revision 0005's): top-up row -> card rows in card_uid order -> the
-- deposit account's cache row -> cards first created by this batch's top-ups -> request claims ->
-- kiosk rows in kiosk_id order. The Stripe paths take the same rows in the same order as before.
--
-- Migrating rewrites the cards table once (its card_uid column becomes the domain, checked row
-- by row): a short exclusive lock on cards, inside the migration's transaction.

-- ---------------------------------------------------------------------------------------------
-- 1. The card UID rule, once

-- 4, 7 or 10 bytes, upper-case hex (PROTOCOL.md; protocol/limits.py CARD_UID_PATTERN).
CREATE DOMAIN ledger_card_uid AS text
    CHECK (VALUE ~ '^([0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$');

ALTER TABLE cards
    DROP CONSTRAINT cards_card_uid_check,
    ALTER COLUMN card_uid TYPE ledger_card_uid;

-- Whether a text is a card UID (the domain's rule), without raising.
CREATE OR REPLACE FUNCTION ledger_card_uid_valid(p_card_uid text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN p_card_uid IS NOT NULL AND p_card_uid::ledger_card_uid IS NOT NULL;
EXCEPTION WHEN check_violation THEN
    RETURN false;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 2. The limits, in one place

-- The request procedures' limits default to the first three; Python always passes its own
-- (FESTIVAL_MAX_BALANCE_CENTS etc., whose defaults are protocol/limits.py's *_DEFAULT). The
-- others bound what is stored (a table's CHECK has the same number) or mirror what Python cuts a
-- text to; cloud/limits.py names each (LEDGER_*), tests/ledger/test_r0009_limits.py keeps both
-- sides equal. Immutable: a call with a constant name is folded into the plan.
CREATE FUNCTION ledger_limit(p_name text) RETURNS integer
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

-- ---------------------------------------------------------------------------------------------
-- 3. The helpers: the outcome object, the audit log, the idempotency cache

-- The jsonb outcome of a request or Stripe event (PROTOCOL.md's result fields; cloud/ledger.py
-- outcome_from_document reads it). Every key is always there, null when it does not apply.
CREATE FUNCTION ledger_outcome(
    p_request_id text, p_status text, p_error_code text, p_message text, p_at timestamptz,
    p_card_uid text DEFAULT NULL, p_transaction_id uuid DEFAULT NULL,
    p_previous_balance_cents bigint DEFAULT NULL, p_new_balance_cents bigint DEFAULT NULL,
    p_order_id uuid DEFAULT NULL, p_replayed boolean DEFAULT false)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'request_id', p_request_id, 'status', p_status, 'error_code', p_error_code,
        'message', p_message, 'transaction_id', p_transaction_id,
        'previous_balance_cents', p_previous_balance_cents,
        'new_balance_cents', p_new_balance_cents, 'replayed', p_replayed,
        'processed_at_ms', ledger_ms(p_at), 'order_id', p_order_id, 'card_uid', p_card_uid)
$$;

-- One row of the seed's audit log (app_transaction_log), at: when its processing started.
CREATE TYPE ledger_log_entry AS (
    at timestamptz, transaction_type text, status text, edge_function_name text, card_id text,
    amount_cents bigint, previous_balance_cents bigint, new_balance_cents bigint,
    error_code text, details jsonb, client_request_id text, transaction_id uuid,
    kiosk_id text, trace_id text);

-- The one INSERT into app_transaction_log, in the entries' order; updated_at is when the row was
-- written (the seed's processing-time queries subtract created_at from it).
CREATE FUNCTION ledger_log_entries(p_entries ledger_log_entry[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO app_transaction_log (
        card_id, transaction_type, status, amount_cents, previous_balance_cents,
        new_balance_cents, error_code, details, edge_function_name, client_request_id,
        transaction_id, kiosk_id, trace_id, "timestamp", created_at, updated_at)
    SELECT e.card_id, e.transaction_type, e.status, e.amount_cents, e.previous_balance_cents,
           e.new_balance_cents, e.error_code, e.details, e.edge_function_name,
           e.client_request_id, e.transaction_id, e.kiosk_id, e.trace_id, e.at, e.at,
           clock_timestamp()
      FROM unnest(p_entries) AS e
$$;

-- One audit row, by name.
CREATE FUNCTION ledger_log(
    p_at timestamptz, p_type text, p_status text, p_edge text, p_card_uid text DEFAULT NULL,
    p_amount_cents bigint DEFAULT NULL, p_previous_balance_cents bigint DEFAULT NULL,
    p_new_balance_cents bigint DEFAULT NULL, p_error_code text DEFAULT NULL,
    p_details jsonb DEFAULT NULL, p_request_id text DEFAULT NULL,
    p_transaction_id uuid DEFAULT NULL, p_kiosk_id text DEFAULT NULL,
    p_trace_id text DEFAULT NULL)
RETURNS void
LANGUAGE sql AS $$
    SELECT ledger_log_entries(ARRAY[ROW(
        p_at, p_type, p_status, p_edge, p_card_uid, p_amount_cents, p_previous_balance_cents,
        p_new_balance_cents, p_error_code, p_details, p_request_id, p_transaction_id, p_kiosk_id,
        p_trace_id)::ledger_log_entry])
$$;

-- An outcome for the seed's idempotency cache (idempotency_keys), under its key.
CREATE TYPE ledger_cache_entry AS (request_id text, source_function text, outcome jsonb);

-- The one INSERT into idempotency_keys: each outcome kept for ledger_limit('idempotency_cache_s')
-- from p_at; a key already there keeps its first outcome. Nothing in the procedures reads it back:
-- processed_requests and topups hold the outcomes that replays return.
CREATE FUNCTION ledger_cache_outcomes(p_entries ledger_cache_entry[], p_at timestamptz)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO idempotency_keys (
        request_id, source_function, status, response_payload, created_at, updated_at,
        expires_at)
    SELECT e.request_id, e.source_function, e.outcome ->> 'status', e.outcome, p_at,
           clock_timestamp(), p_at + make_interval(secs => ledger_limit('idempotency_cache_s'))
      FROM unnest(p_entries) AS e
    ON CONFLICT (request_id) DO NOTHING
$$;

-- ---------------------------------------------------------------------------------------------
-- 4. Kiosk and POS requests: decide, then write

-- A request as the procedures read it: the protocol's JSON form (protocol.models.request_to_dict;
-- keys it has beyond these, like v and created_at_ms, are not read) plus payload_sha256 (hex),
-- source ('mqtt' | 'http') and trace_id.
CREATE TYPE ledger_request AS (
    type text, request_id text, payload_sha256 text, kiosk_id text, seq bigint, card_uid text,
    source text, trace_id text, items jsonb, total_cents bigint, staff_id text,
    amount_cents bigint, payment_method text, checkpoint_id text);

-- What was decided for one request, before anything is written.
CREATE TYPE ledger_decision AS (
    error_code text,            -- NULL: approved
    message text,
    delta_cents bigint,         -- what the card's balance moves by (negative: it pays)
    deposit_delta_cents bigint, -- what the deposit account moves by (NULL: no deposit lines)
    opens_card boolean,         -- an unknown card is opened by it: decide again on that card
    with_order boolean);        -- approved, it is an order with an order_id of its own

-- The system account on the other side of a request's card posting.
CREATE FUNCTION ledger_counter_account(
    p_type text, p_kiosk_id text, p_payment_method text, p_checkpoint_id text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_type
        WHEN 'bar_order' THEN 'sales:' || p_kiosk_id
        ELSE CASE p_payment_method WHEN 'cash' THEN 'cash:' ELSE 'terminal:' END
             || coalesce(p_checkpoint_id, p_kiosk_id)
    END
$$;

-- The seed's edge function name of a request type (app_transaction_log, idempotency_keys).
CREATE FUNCTION ledger_source_function(p_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_type
        WHEN 'bar_order' THEN 'process-bar-order'
        WHEN 'checkpoint_recharge' THEN 'process-checkpoint-recharge'
    END
$$;

-- Decide one request against its card as the batch has it so far (p_card_status NULL: no such
-- card) and the deposit account's balance (NULL: not read, because no order of the batch has
-- deposit or return lines, or because the request was seen before and is only checked). Raises
-- invalid_parameter_value for a malformed request. Reads and writes nothing.
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

-- What the batch decided for one request, in input order: 'new' (decided now), 'replayed' or
-- 'conflict' (seen before); its outcome; what it moves on the deposit account (approved orders
-- with deposit lines only).
CREATE TYPE ledger_decided AS (flag text, outcome jsonb, deposit_delta_cents bigint);

-- Write everything a batch decided, in one statement: claims, balances, transactions, postings
-- (one INSERT, so the balance trigger sees whole transactions), the seed-compatible rows, the
-- audit log and the idempotency cache; then the kiosks' seqs. Returns the outcomes in input
-- order. A claim lost to a concurrent transaction shows as fewer claimed rows than new requests:
-- serialization_failure, and the caller retries the whole batch.
CREATE FUNCTION ledger_write_requests(
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

-- The batch: every request decided in order, as if one after the other, in one transaction.
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

-- The limit parameters' defaults: ledger_limit (the callers pass theirs; the defaults are for a
-- call by hand, as the docs show one).
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

-- One kiosk or POS request (an object of the form sp_process_batch takes), in its own
-- transaction: what Ledger.apply calls, for the consumer and the API's POS endpoints alike.
-- Not named sp_process_*: the seed's "Check if stored procedures exist" query lists exactly the
-- seed's procedures.
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

-- The seed's procedures, with their signatures (their bodies are revision 0005's).
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

-- A request refused before the ledger (revision 0002; the outcome, log and cache by the helpers).
CREATE OR REPLACE FUNCTION sp_record_rejection(
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
    v_edge := coalesce(ledger_source_function(p_kind), 'mqtt-consumer');
    v_outcome := ledger_outcome(
        p_request_id, 'rejected', p_error_code,
        left(coalesce(p_message, p_error_code),
             ledger_limit('rejection_message_characters_max')),
        v_started, p_card_uid);

    INSERT INTO processed_requests (
        request_id, payload_sha256, kiosk_id, source, kind, status, error_code, transaction_id,
        outcome, created_at)
    VALUES (p_request_id, v_sha, p_kiosk_id, p_source, p_kind, 'rejected', p_error_code, NULL,
            v_outcome, v_started)
    ON CONFLICT (request_id) DO NOTHING;
    IF FOUND THEN
        v_status := 'rejected';
        PERFORM ledger_cache_outcomes(
            ARRAY[ROW(p_request_id, v_edge, v_outcome)::ledger_cache_entry], v_started);
        IF p_source = 'mqtt' AND p_seq IS NOT NULL AND p_kiosk_id IS NOT NULL THEN
            PERFORM ledger_track_seqs(ARRAY[p_kiosk_id], ARRAY[p_seq], v_started);
        END IF;
    ELSE
        SELECT * INTO STRICT v_existing FROM processed_requests WHERE request_id = p_request_id;
        IF v_existing.payload_sha256 = v_sha THEN
            v_outcome := v_existing.outcome || '{"replayed": true}';
            v_status := 'replayed';
        ELSE
            v_outcome := ledger_outcome(
                p_request_id, 'rejected', 'IDEMPOTENCY_CONFLICT',
                'Request id already used for a different request', v_started, p_card_uid);
            v_status := 'rejected';
        END IF;
    END IF;

    PERFORM ledger_log(
        p_at => v_started, p_type => coalesce(p_kind, 'unknown'), p_status => v_status,
        p_edge => v_edge, p_card_uid => p_card_uid, p_error_code => v_outcome ->> 'error_code',
        p_details => jsonb_build_object('source', p_source, 'seq', p_seq,
                                        'replayed', v_status = 'replayed'),
        p_request_id => p_request_id, p_kiosk_id => p_kiosk_id, p_trace_id => p_trace_id);
    RETURN v_outcome;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 5. Cards blocked and unblocked by an operator

-- A blocked card keeps the reason it already had (revision 0003): the new one is appended.
CREATE OR REPLACE FUNCTION ledger_block_reason(p_status text, p_current text, p_reason text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_status <> 'blocked' OR coalesce(p_current, '') = ''
            THEN left(p_reason, ledger_limit('reason_characters_max'))
        WHEN position(p_reason IN p_current) > 0 THEN p_current
        ELSE left(p_current || '; ' || p_reason, ledger_limit('reason_characters_max'))
    END
$$;

CREATE OR REPLACE FUNCTION sp_block_card(p_card_uid text, p_reason text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_reason text := left(p_reason, ledger_limit('reason_characters_max'));
    v_card cards;
BEGIN
    UPDATE cards SET status = 'blocked', blocked_reason = v_reason, updated_at = v_started
     WHERE card_uid = p_card_uid
    RETURNING * INTO v_card;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM ledger_log(
        p_at => v_started, p_type => 'card_block', p_status => 'approved', p_edge => 'admin',
        p_card_uid => p_card_uid, p_previous_balance_cents => v_card.balance_cents,
        p_new_balance_cents => v_card.balance_cents,
        p_details => jsonb_build_object('reason', v_reason));
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION sp_unblock_card(p_card_uid text) RETURNS boolean
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
    PERFORM ledger_log(
        p_at => v_started, p_type => 'card_unblock', p_status => 'approved', p_edge => 'admin',
        p_card_uid => p_card_uid, p_previous_balance_cents => v_card.balance_cents,
        p_new_balance_cents => v_card.balance_cents);
    RETURN true;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 6. Stripe

-- Revision 0002's log of one webhook event (the audit row through ledger_log), and the event's
-- first outcome stored on its row.
CREATE OR REPLACE FUNCTION ledger_stripe_log(
    p_started timestamptz, p_type text, p_status text, p_card_uid text, p_amount_cents bigint,
    p_outcome jsonb, p_event_id text, p_key text, p_trace_id text)
RETURNS void
LANGUAGE sql AS $$
    SELECT ledger_log(
        p_at => p_started, p_type => p_type, p_status => p_status, p_edge => 'stripe-webhook',
        p_card_uid => p_card_uid, p_amount_cents => p_amount_cents,
        p_previous_balance_cents => (p_outcome ->> 'previous_balance_cents')::bigint,
        p_new_balance_cents => (p_outcome ->> 'new_balance_cents')::bigint,
        p_error_code => p_outcome ->> 'error_code',
        p_details => jsonb_build_object('event_id', p_event_id,
                                        'message', p_outcome ->> 'message',
                                        'replayed', (p_outcome ->> 'replayed')::boolean),
        p_request_id => p_key, p_transaction_id => (p_outcome ->> 'transaction_id')::uuid,
        p_trace_id => p_trace_id);
    UPDATE stripe_events SET processed_at = coalesce(processed_at, now()),
                             outcome = coalesce(outcome, p_outcome)
     WHERE event_id = p_event_id;
$$;

-- Revision 0006's anomaly: rejected INVALID_REQUEST, for a human; nothing credited or refunded.
CREATE OR REPLACE FUNCTION ledger_stripe_anomaly(
    p_started timestamptz, p_type text, p_event_id text, p_key text, p_card_uid text,
    p_amount_cents bigint, p_message text, p_trace_id text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_outcome jsonb := ledger_outcome(
        coalesce(p_key, p_event_id), 'rejected', 'INVALID_REQUEST',
        left(p_message, ledger_limit('stripe_message_characters_max')), p_started)
        || '{"anomaly": true}';
BEGIN
    PERFORM ledger_stripe_log(p_started, p_type, 'anomaly', p_card_uid, p_amount_cents,
                              v_outcome, p_event_id, p_key, p_trace_id);
    RETURN v_outcome;
END
$$;

-- A paid Checkout Session credited to a card the caller holds locked (revisions 0002 and 0006):
-- its balance, the transaction (the card gets it, stripe:clearing gives it) and the seed's
-- recharges row. Returns the transaction id.
CREATE FUNCTION ledger_credit_from_stripe(
    p_card cards, p_amount_cents bigint, p_event_id text, p_topup_id text, p_session_id text,
    p_payment_intent_id text, p_at timestamptz)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_tx uuid := ledger_uuid7();
    v_new bigint := p_card.balance_cents + p_amount_cents;
BEGIN
    UPDATE cards SET balance_cents = v_new, updated_at = p_at WHERE card_uid = p_card.card_uid;
    INSERT INTO transactions (transaction_id, kind, stripe_event_id, topup_id, created_at)
    VALUES (v_tx, 'stripe_recharge', p_event_id, p_topup_id, p_at);
    INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
    VALUES (v_tx, p_card.account_id, p_amount_cents, v_new),
           (v_tx, ledger_system_account('stripe:clearing'), -p_amount_cents, NULL);
    INSERT INTO recharges (
        recharge_id, transaction_id, card_id, amount_cents, payment_method, stripe_session_id,
        stripe_payment_intent_id, source, created_at)
    VALUES (ledger_uuid7(), v_tx, p_card.card_uid, p_amount_cents, 'stripe', p_session_id,
            p_payment_intent_id, 'stripe', p_at);
    RETURN v_tx;
END
$$;

-- Money Stripe took back (a refund, revision 0002; a lost dispute, 0006) taken off a card the
-- caller holds locked: as much as its balance covers; stripe:clearing gets it all back, the rest
-- is booked to p_loss_account. p_block_reason: the card is blocked with it (NULL: its status
-- stays). Returns the transaction and what was taken off the card.
CREATE FUNCTION ledger_take_back(
    p_card cards, p_delta_cents bigint, p_loss_account text, p_block_reason text,
    p_event_id text, p_topup_id text, p_at timestamptz,
    OUT transaction_id uuid, OUT taken_cents bigint, OUT new_balance_cents bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_tx uuid;
    v_take bigint := least(p_delta_cents, p_card.balance_cents);
    v_new bigint := p_card.balance_cents - least(p_delta_cents, p_card.balance_cents);
BEGIN
    v_tx := ledger_uuid7();
    UPDATE cards
       SET balance_cents = v_new,
           status = CASE WHEN p_block_reason IS NULL THEN status ELSE 'blocked' END,
           blocked_reason = coalesce(p_block_reason, blocked_reason),
           updated_at = p_at
     WHERE card_uid = p_card.card_uid;
    INSERT INTO transactions (transaction_id, kind, stripe_event_id, topup_id, created_at)
    VALUES (v_tx, 'stripe_refund', p_event_id, p_topup_id, p_at);
    INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
    SELECT * FROM (VALUES
        (v_tx, p_card.account_id, -v_take, v_new),
        (v_tx, ledger_system_account('stripe:clearing'), p_delta_cents, NULL::bigint),
        (v_tx, ledger_system_account(p_loss_account), v_take - p_delta_cents, NULL::bigint)) p
     WHERE p.column3 <> 0 OR p.column2 = p_card.account_id;
    transaction_id := v_tx;
    taken_cents := v_take;
    new_balance_cents := v_new;
END
$$;

CREATE OR REPLACE FUNCTION sp_process_stripe_recharge(
    p_event_id text,
    p_session_id text,
    p_card_uid text,
    p_amount_cents bigint,
    p_currency text,
    p_payment_intent_id text DEFAULT NULL,
    p_topup_id text DEFAULT NULL,
    p_expected_currency text DEFAULT 'EUR',
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
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
            v_tx := ledger_credit_from_stripe(v_card, p_amount_cents, p_event_id, v_topup.topup_id,
                                              p_session_id, p_payment_intent_id, v_started);
            v_new := v_previous + p_amount_cents;
        END IF;
    END IF;

    v_outcome := ledger_outcome(p_session_id, v_status, v_code, v_message, v_started,
                                v_card_uid, v_tx, v_previous, v_new);
    UPDATE topups
       SET status = v_topup_status, outcome = v_outcome, transaction_id = v_tx,
           credited_cents = CASE WHEN v_tx IS NULL THEN 0 ELSE p_amount_cents END,
           payment_intent_id = coalesce(p_payment_intent_id, payment_intent_id),
           updated_at = v_started
     WHERE topup_id = v_topup.topup_id;
    PERFORM ledger_cache_outcomes(
        ARRAY[ROW('stripe:' || p_session_id, 'stripe-webhook', v_outcome)::ledger_cache_entry],
        v_started);
    PERFORM ledger_stripe_log(v_started, 'stripe_recharge',
                              CASE WHEN v_topup_status = 'anomaly' THEN 'anomaly'
                                   ELSE v_status END,
                              v_card_uid, p_amount_cents, v_outcome, p_event_id, p_session_id,
                              p_trace_id);
    RETURN v_outcome;
END
$$;

CREATE OR REPLACE FUNCTION sp_handle_stripe_checkout(
    p_event_id text,
    p_session_id text,
    p_topup_id text,
    p_card_uid text,
    p_amount_cents bigint,
    p_currency text,
    p_payment_intent_id text DEFAULT NULL,
    p_expected_currency text DEFAULT 'EUR',
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_topup topups;
    v_card cards;
    v_tx uuid;
    v_code text;
    v_status text;
    v_previous bigint;
    v_new bigint;
    v_message text;
    v_reason text;
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_session_id IS NULL OR p_amount_cents IS NULL
       OR p_amount_cents < 0 OR p_currency IS NULL THEN
        RAISE EXCEPTION 'a Stripe checkout needs event id, session id, amount >= 0 and currency'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;

    IF p_topup_id IS NULL THEN
        RETURN ledger_stripe_anomaly(v_started, 'stripe_recharge', p_event_id, p_session_id,
            p_card_uid, p_amount_cents,
            'Not a session this API created (no metadata.topup_id): not credited', p_trace_id);
    END IF;
    SELECT * INTO v_topup FROM topups WHERE topup_id = p_topup_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_stripe_anomaly(v_started, 'stripe_recharge', p_event_id, p_session_id,
            p_card_uid, p_amount_cents,
            'Not a session this API created (unknown metadata.topup_id): not credited',
            p_trace_id);
    END IF;
    IF v_topup.session_id IS NOT NULL AND v_topup.session_id <> p_session_id THEN
        v_reason := 'the top-up belongs to another Checkout Session';
    ELSIF p_card_uid IS DISTINCT FROM v_topup.card_uid THEN
        v_reason := 'metadata.card_uid differs from the top-up''s card';
    ELSIF p_amount_cents <> v_topup.amount_cents THEN
        v_reason := format('amount_total %s differs from the top-up''s %s', p_amount_cents,
                           v_topup.amount_cents);
    ELSIF upper(p_currency) <> v_topup.currency THEN
        v_reason := format('currency %s differs from the top-up''s %s', upper(left(p_currency, 3)),
                           v_topup.currency);
    END IF;
    IF v_reason IS NOT NULL THEN
        RETURN ledger_stripe_anomaly(v_started, 'stripe_recharge', p_event_id, p_session_id,
            p_card_uid, p_amount_cents,
            format('Session does not match top-up %s (%s): not credited', v_topup.topup_id,
                   v_reason), p_trace_id);
    END IF;

    -- Ours. Once decided (credited or declined), the same outcome forever.
    IF v_topup.status IN ('credited', 'declined', 'anomaly') THEN
        v_outcome := v_topup.outcome || '{"replayed": true}';
        PERFORM ledger_stripe_log(v_started, 'stripe_recharge', 'replayed', v_topup.card_uid,
                                  p_amount_cents, v_outcome, p_event_id, p_session_id,
                                  p_trace_id);
        RETURN v_outcome;
    END IF;

    -- pending, open, expired (paid late: still credited or refunded) or failed.
    v_card := ledger_open_card(v_topup.card_uid);
    v_previous := v_card.balance_cents;
    v_new := v_previous;
    IF v_topup.currency <> upper(p_expected_currency) THEN
        v_status := 'declined';
        v_code := 'INVALID_REQUEST';
        v_reason := format('paid in %s, not %s', v_topup.currency, upper(p_expected_currency));
    ELSIF v_card.status = 'blocked' THEN
        v_status := 'declined';
        v_code := 'CARD_BLOCKED';
        v_reason := 'card blocked';
    ELSIF v_previous + p_amount_cents > p_balance_cents_max THEN
        v_status := 'declined';
        v_code := 'BALANCE_LIMIT_EXCEEDED';
        v_reason := 'maximum balance exceeded';
    ELSIF p_amount_cents = 0 THEN
        v_status := 'declined';
        v_code := 'INVALID_REQUEST';
        v_reason := 'nothing paid';
    ELSE
        v_status := 'approved';
        v_message := 'Topped up';
        v_tx := ledger_credit_from_stripe(v_card, p_amount_cents, p_event_id, v_topup.topup_id,
                                          p_session_id, p_payment_intent_id, v_started);
        v_new := v_previous + p_amount_cents;
    END IF;

    IF v_status = 'declined' AND p_amount_cents > 0 THEN
        v_message := format('Not credited (%s): refunded in full', v_reason);
        INSERT INTO topup_refunds (
            topup_id, session_id, payment_intent_id, card_uid, amount_cents, currency, reason,
            idempotency_key, status, last_error)
        VALUES (v_topup.topup_id, p_session_id, p_payment_intent_id, v_topup.card_uid,
                p_amount_cents, v_topup.currency, v_reason, 'refund-session-' || p_session_id,
                CASE WHEN p_payment_intent_id IS NULL THEN 'failed' ELSE 'owed' END,
                CASE WHEN p_payment_intent_id IS NULL
                     THEN 'the session has no payment_intent to refund: refund it by hand' END)
        ON CONFLICT DO NOTHING;
    ELSIF v_status = 'declined' THEN
        v_message := format('Not credited (%s)', v_reason);
    END IF;

    v_outcome := ledger_outcome(p_session_id, v_status, v_code, v_message, v_started,
                                v_card.card_uid, v_tx, v_previous, v_new)
                 || jsonb_build_object(
                        'topup_id', v_topup.topup_id,
                        'refund', CASE WHEN v_status = 'declined' AND p_amount_cents > 0
                                       THEN 'owed' END);
    UPDATE topups
       SET status = CASE WHEN v_status = 'approved' THEN 'credited' ELSE 'declined' END,
           session_id = p_session_id, outcome = v_outcome, transaction_id = v_tx,
           credited_cents = CASE WHEN v_tx IS NULL THEN 0 ELSE p_amount_cents END,
           payment_intent_id = coalesce(p_payment_intent_id, payment_intent_id),
           updated_at = v_started
     WHERE topup_id = v_topup.topup_id;
    PERFORM ledger_cache_outcomes(
        ARRAY[ROW('stripe:' || p_session_id, 'stripe-webhook', v_outcome)::ledger_cache_entry],
        v_started);
    PERFORM ledger_stripe_log(v_started, 'stripe_recharge', v_status, v_card.card_uid,
                              p_amount_cents, v_outcome, p_event_id, p_session_id, p_trace_id);
    RETURN v_outcome;
END
$$;

-- charge.refunded linked by the payment intent (revision 0002).
CREATE OR REPLACE FUNCTION sp_process_stripe_refund(
    p_event_id text,
    p_payment_intent_id text,
    p_amount_refunded_cents bigint,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_topup topups;
    v_card cards;
    v_delta bigint;
    v_shortfall bigint;
    v_new bigint;
    v_tx uuid;
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
        v_outcome := ledger_outcome(p_event_id, 'rejected', 'INVALID_REQUEST',
                                    'Unknown payment intent: nothing to reverse', v_started);
        PERFORM ledger_stripe_log(v_started, 'stripe_refund', 'rejected', NULL,
                                  p_amount_refunded_cents, v_outcome, p_event_id,
                                  p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;

    -- Only what was credited can be taken back.
    v_delta := least(p_amount_refunded_cents, v_topup.credited_cents) - v_topup.refunded_cents;
    SELECT * INTO v_card FROM cards WHERE card_uid = v_topup.card_uid FOR UPDATE;
    IF v_delta <= 0 THEN
        v_outcome := ledger_outcome(
            p_event_id, 'approved', NULL,
            CASE WHEN v_topup.credited_cents = 0
                 THEN 'Top-up was never credited: nothing to take back'
                 ELSE 'Refund already applied' END,
            v_started, v_topup.card_uid, NULL, v_card.balance_cents, v_card.balance_cents,
            p_replayed => v_topup.credited_cents > 0);
        PERFORM ledger_stripe_log(v_started, 'stripe_refund',
                                  CASE WHEN v_topup.credited_cents > 0 THEN 'replayed'
                                       ELSE 'approved' END,
                                  v_topup.card_uid, 0, v_outcome, p_event_id,
                                  p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;

    -- What the balance does not cover is a shortfall: the card is blocked.
    v_shortfall := v_delta - least(v_delta, v_card.balance_cents);
    SELECT t.transaction_id, t.new_balance_cents INTO v_tx, v_new
      FROM ledger_take_back(v_card, v_delta, 'shortfall:refunds',
                            CASE WHEN v_shortfall > 0 THEN 'refund shortfall' END,
                            p_event_id, v_topup.topup_id, v_started) t;
    UPDATE topups SET refunded_cents = refunded_cents + v_delta,
                      shortfall_cents = shortfall_cents + v_shortfall, updated_at = v_started
     WHERE topup_id = v_topup.topup_id;
    v_outcome := ledger_outcome(
        p_event_id, 'approved', NULL,
        CASE WHEN v_shortfall > 0
             THEN format('Refunded %s cents; %s cents not covered by the balance: card blocked',
                         v_delta, v_shortfall)
             ELSE format('Refunded %s cents', v_delta) END,
        v_started, v_card.card_uid, v_tx, v_card.balance_cents, v_new);
    PERFORM ledger_stripe_log(v_started, 'stripe_refund', 'approved', v_card.card_uid, v_delta,
                              v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
    RETURN v_outcome;
END
$$;

-- charge.dispute.created linked by the payment intent (revision 0002): the card is blocked.
CREATE OR REPLACE FUNCTION sp_process_stripe_dispute(
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
        v_outcome := ledger_outcome(p_event_id, 'rejected', 'INVALID_REQUEST',
                                    'Unknown payment intent: no card to block', v_started);
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
    v_outcome := ledger_outcome(p_event_id, 'approved', NULL, 'Card blocked: payment disputed',
                                v_started, v_card.card_uid, NULL, v_card.balance_cents,
                                v_card.balance_cents);
    PERFORM ledger_stripe_log(v_started, 'stripe_dispute', 'approved', v_card.card_uid, NULL,
                              v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
    RETURN v_outcome;
END
$$;

-- Revision 0003's card-metadata fallback, once for refunds and disputes (p_type 'stripe_refund'
-- or 'stripe_dispute'; see revision 0003's comments). NULL: not for the fallback (a top-up has
-- the payment intent, the card uid is no card uid, or there is no such card), so the caller's
-- payment-intent procedure of revision 0002 decides. The event's row is locked before the card's.
CREATE FUNCTION ledger_stripe_metadata_fallback(
    p_type text, p_event_id text, p_payment_intent_id text, p_card_uid text,
    p_amount_cents bigint, p_trace_id text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_refund constant boolean := p_type = 'stripe_refund';
    v_stored jsonb;
    v_card cards;
    v_outcome jsonb;
BEGIN
    -- Already handled through the metadata: the stored outcome, whatever is known now.
    v_stored := ledger_metadata_outcome(p_event_id, false);
    IF v_stored IS NULL AND (
           EXISTS (SELECT 1 FROM topups WHERE payment_intent_id = p_payment_intent_id)
           OR NOT ledger_card_uid_valid(p_card_uid)) THEN
        RETURN NULL;
    END IF;

    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    v_stored := ledger_metadata_outcome(p_event_id, true);
    IF v_stored IS NOT NULL THEN
        v_outcome := v_stored || '{"replayed": true}';
        PERFORM ledger_stripe_log(v_started, p_type, 'replayed', v_stored ->> 'card_uid',
                                  CASE WHEN v_refund THEN 0 END, v_outcome, p_event_id,
                                  p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;
    SELECT * INTO v_card FROM cards WHERE card_uid = p_card_uid FOR UPDATE;
    IF NOT FOUND THEN
        -- No card to protect (a card that does not exist is not created to be blocked).
        RETURN NULL;
    END IF;
    UPDATE cards
       SET status = 'blocked',
           blocked_reason = ledger_block_reason(
               v_card.status, v_card.blocked_reason,
               CASE WHEN v_refund THEN 'refund of an unmatched payment: reconcile'
                    ELSE 'payment disputed (unmatched payment: reconcile)' END),
           updated_at = v_started
     WHERE card_uid = v_card.card_uid;
    IF v_refund THEN
        -- Nothing taken: what was credited for a payment we never linked is unknown.
        v_outcome := ledger_outcome(
            p_event_id, 'rejected', 'INVALID_REQUEST',
            'Unknown payment intent: nothing taken back, card blocked until an operator '
            || 'reconciles the refund',
            v_started, v_card.card_uid, NULL, v_card.balance_cents, v_card.balance_cents);
    ELSE
        v_outcome := ledger_outcome(
            p_event_id, 'approved', NULL,
            'Card blocked: payment disputed (payment intent unknown, linked by the card '
            || 'metadata)',
            v_started, v_card.card_uid, NULL, v_card.balance_cents, v_card.balance_cents);
    END IF;
    v_outcome := v_outcome || '{"linked_by": "card_metadata"}';
    PERFORM ledger_stripe_log(v_started, p_type,
                              CASE WHEN v_refund THEN 'anomaly' ELSE 'approved' END,
                              v_card.card_uid, CASE WHEN v_refund THEN p_amount_cents END,
                              v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
    -- This outcome is the event's, even over one stored by an earlier unmatched delivery.
    UPDATE stripe_events SET outcome = v_outcome WHERE event_id = p_event_id;
    RETURN v_outcome;
END
$$;

-- charge.refunded (the webhook's entry point from revision 0003).
CREATE OR REPLACE FUNCTION sp_handle_stripe_refund(
    p_event_id text,
    p_payment_intent_id text,
    p_card_uid text,
    p_amount_refunded_cents bigint,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_payment_intent_id IS NULL OR p_amount_refunded_cents IS NULL
       OR p_amount_refunded_cents < 0 THEN
        RAISE EXCEPTION 'a refund needs event id, payment intent and amount_refunded >= 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_outcome := ledger_stripe_metadata_fallback('stripe_refund', p_event_id,
                                                 p_payment_intent_id, p_card_uid,
                                                 p_amount_refunded_cents, p_trace_id);
    IF v_outcome IS NULL THEN
        -- The payment intent links it (or nothing else could): revision 0002's procedure.
        v_outcome := sp_process_stripe_refund(p_event_id, p_payment_intent_id,
                                              p_amount_refunded_cents, p_trace_id);
    END IF;
    RETURN v_outcome;
END
$$;

-- charge.dispute.created (the webhook's entry point from revision 0003).
CREATE OR REPLACE FUNCTION sp_handle_stripe_dispute(
    p_event_id text,
    p_payment_intent_id text,
    p_card_uid text,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL THEN
        RAISE EXCEPTION 'a dispute needs an event id' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_outcome := ledger_stripe_metadata_fallback('stripe_dispute', p_event_id,
                                                 p_payment_intent_id, p_card_uid, NULL,
                                                 p_trace_id);
    IF v_outcome IS NULL THEN
        -- The payment intent links it (or nothing else could): revision 0002's procedure.
        v_outcome := sp_process_stripe_dispute(p_event_id, p_payment_intent_id, p_trace_id);
    END IF;
    RETURN v_outcome;
END
$$;

-- charge.dispute.closed (revision 0006): 'lost' takes the disputed amount back.
CREATE OR REPLACE FUNCTION sp_handle_stripe_dispute_closed(
    p_event_id text,
    p_dispute_id text,
    p_payment_intent_id text,
    p_status text,
    p_amount_cents bigint,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_topup topups;
    v_dispute stripe_disputes;
    v_card cards;
    v_delta bigint;
    v_take bigint;
    v_new bigint;
    v_tx uuid;
    v_message text;
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_dispute_id IS NULL OR p_status IS NULL
       OR p_amount_cents IS NULL OR p_amount_cents < 0 THEN
        RAISE EXCEPTION 'a closed dispute needs event id, dispute id, status and amount >= 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    SELECT * INTO v_topup FROM topups WHERE payment_intent_id = p_payment_intent_id
     ORDER BY created_at LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_stripe_anomaly(v_started, 'stripe_dispute', p_event_id,
            p_payment_intent_id, NULL, p_amount_cents,
            format('Dispute %s closed (%s) for an unknown payment intent: nothing booked',
                   left(p_dispute_id, 64), left(p_status, 32)), p_trace_id);
    END IF;
    INSERT INTO stripe_disputes (dispute_id, payment_intent_id, topup_id, status, amount_cents)
    VALUES (p_dispute_id, p_payment_intent_id, v_topup.topup_id, p_status, p_amount_cents)
    ON CONFLICT (dispute_id) DO NOTHING;
    SELECT * INTO STRICT v_dispute FROM stripe_disputes WHERE dispute_id = p_dispute_id
       FOR UPDATE;
    IF v_dispute.outcome IS NOT NULL THEN
        v_outcome := v_dispute.outcome || '{"replayed": true}';
        PERFORM ledger_stripe_log(v_started, 'stripe_dispute', 'replayed', v_topup.card_uid,
                                  NULL, v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;
    v_card := ledger_open_card(v_topup.card_uid);
    v_new := v_card.balance_cents;
    v_delta := 0;
    IF p_status = 'lost' THEN
        v_delta := greatest(0, least(p_amount_cents, v_topup.credited_cents
                                     - v_topup.refunded_cents - v_topup.lost_cents));
    END IF;
    IF v_delta > 0 THEN
        SELECT t.transaction_id, t.taken_cents, t.new_balance_cents INTO v_tx, v_take, v_new
          FROM ledger_take_back(v_card, v_delta, 'loss:disputes',
                                ledger_block_reason(v_card.status, v_card.blocked_reason,
                                                    'payment disputed: lost'),
                                p_event_id, v_topup.topup_id, v_started) t;
        UPDATE topups SET lost_cents = lost_cents + v_delta, updated_at = v_started
         WHERE topup_id = v_topup.topup_id;
        v_message := format('Dispute lost: %s cents reversed, %s taken off the card, %s booked '
                            || 'to loss:disputes', v_delta, v_take, v_delta - v_take);
    ELSIF p_status = 'lost' THEN
        v_message := 'Dispute lost: nothing credited is left to reverse';
    ELSE
        v_message := format('Dispute closed (%s): no money moved; the card stays blocked until '
                            || 'an operator unblocks it', left(p_status, 32));
    END IF;
    v_outcome := ledger_outcome(p_event_id, 'approved', NULL, v_message, v_started,
                                v_card.card_uid, v_tx, v_card.balance_cents, v_new);
    UPDATE stripe_disputes
       SET status = p_status, lost_cents = v_delta, transaction_id = v_tx, outcome = v_outcome,
           updated_at = v_started
     WHERE dispute_id = p_dispute_id;
    PERFORM ledger_stripe_log(v_started, 'stripe_dispute', 'approved', v_card.card_uid,
                              v_delta, v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
    RETURN v_outcome;
END
$$;

-- Owed refunds: Stripe's answer recorded (revision 0006; the audit row through ledger_log).
CREATE OR REPLACE FUNCTION sp_finish_topup_refund(
    p_topup_id text, p_result text, p_refund_id text DEFAULT NULL, p_error text DEFAULT NULL,
    p_retry_after_s integer DEFAULT 60)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_error text := left(p_error, ledger_limit('refund_error_characters_max'));
    v_refund topup_refunds;
BEGIN
    IF p_result NOT IN ('succeeded', 'failed', 'retry') THEN
        RAISE EXCEPTION 'result must be succeeded, failed or retry'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE topup_refunds
       SET status = CASE p_result WHEN 'retry' THEN 'owed' ELSE p_result END,
           refund_id = coalesce(left(p_refund_id, ledger_limit('stripe_id_characters_max')),
                                refund_id),
           last_error = CASE WHEN p_result = 'succeeded' THEN NULL ELSE v_error END,
           next_attempt_at = CASE WHEN p_result = 'retry'
                                  THEN now() + make_interval(secs => greatest(p_retry_after_s, 0))
                                  ELSE next_attempt_at END,
           leased_until = NULL,
           updated_at = v_started
     WHERE topup_id = p_topup_id AND status = 'owed'
    RETURNING * INTO v_refund;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM ledger_log(
        p_at => v_started, p_type => 'stripe_refund_request',
        p_status => CASE p_result WHEN 'succeeded' THEN 'approved' WHEN 'failed' THEN 'anomaly'
                                  ELSE 'retry' END,
        p_edge => 'stripe-refund', p_card_uid => v_refund.card_uid,
        p_amount_cents => v_refund.amount_cents,
        p_details => jsonb_build_object('topup_id', v_refund.topup_id, 'refund_id', p_refund_id,
                                        'reason', v_refund.reason,
                                        'attempts', v_refund.attempts, 'error', v_error),
        p_request_id => v_refund.idempotency_key);
    RETURN true;
END
$$;

-- An event the webhook ignores or cannot place (revision 0006).
CREATE OR REPLACE FUNCTION sp_record_stripe_note(
    p_event_id text, p_disposition text, p_reason text, p_trace_id text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_disposition NOT IN ('ignored', 'anomaly') THEN
        RAISE EXCEPTION 'a note needs an event id and ignored|anomaly'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    IF EXISTS (SELECT 1 FROM stripe_events WHERE event_id = p_event_id AND outcome IS NOT NULL)
    THEN
        RETURN false;
    END IF;
    IF p_disposition = 'anomaly' THEN
        PERFORM ledger_stripe_anomaly(v_started, 'stripe_event', p_event_id, NULL, NULL, NULL,
                                      p_reason, p_trace_id);
    ELSE
        -- Not a request's outcome: what the event's row says about it.
        v_outcome := jsonb_build_object(
            'status', 'ignored',
            'message', left(p_reason, ledger_limit('stripe_message_characters_max')),
            'processed_at_ms', ledger_ms(v_started));
        UPDATE stripe_events SET processed_at = coalesce(processed_at, now()),
                                 outcome = coalesce(outcome, v_outcome)
         WHERE event_id = p_event_id;
    END IF;
    RETURN true;
END
$$;

-- A pending online top-up (revision 0002); the card UID checked by the domain's rule.
CREATE OR REPLACE FUNCTION sp_create_topup(
    p_topup_id text, p_card_uid text, p_amount_cents bigint, p_currency text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT ledger_card_uid_valid(p_card_uid) THEN
        RAISE EXCEPTION 'invalid card uid' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO topups (topup_id, card_uid, amount_cents, currency)
    VALUES (p_topup_id, p_card_uid, p_amount_cents, upper(p_currency))
    ON CONFLICT (topup_id) DO NOTHING;
    RETURN FOUND;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 7. Dead letters, kiosk status and scans: their bounds from ledger_limit (revision 0005's code)

CREATE OR REPLACE FUNCTION ledger_store_dead_letter(
    p_topic text, p_payload bytea, p_payload_length bigint, p_payload_sha256 bytea,
    p_error_code text, p_reason text, p_kiosk_id text, p_per_minute_max integer)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_kiosk_id text := left(p_kiosk_id, ledger_limit('name_characters_max'));
    v_minute timestamptz := date_trunc('minute', now());
    v_stored bigint;
    v_id bigint;
BEGIN
    IF p_payload IS NULL OR p_payload_length IS NULL OR p_payload_length < length(p_payload)
       OR p_payload_sha256 IS NULL OR length(p_payload_sha256) <> 32
       OR p_per_minute_max IS NULL OR p_per_minute_max < 0 THEN
        RAISE EXCEPTION 'a dead letter needs its payload, its full length, its SHA-256 and a bound'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The counter row is locked from here to the commit: the decision below cannot race.
    INSERT INTO dead_letter_counts AS c (kiosk_id, minute, received_count, stored_count)
    VALUES (v_kiosk_id, v_minute, 1, 0)
    ON CONFLICT ((coalesce(kiosk_id, '')), minute)
    DO UPDATE SET received_count = c.received_count + 1, updated_at = now()
    RETURNING c.stored_count INTO v_stored;
    IF v_stored >= p_per_minute_max THEN
        RETURN NULL;  -- over the bound: only the counter grew
    END IF;
    UPDATE dead_letter_counts SET stored_count = stored_count + 1
     WHERE coalesce(kiosk_id, '') = coalesce(v_kiosk_id, '') AND minute = v_minute;
    INSERT INTO dead_letters (
        topic, payload, payload_length, payload_sha256, error_code, reason, kiosk_id)
    VALUES (left(p_topic, ledger_limit('dead_letter_topic_characters_max')),
            substring(p_payload FROM 1 FOR ledger_limit('dead_letter_bytes_max')),
            p_payload_length, p_payload_sha256,
            left(p_error_code, ledger_limit('name_characters_max')),
            left(p_reason, ledger_limit('dead_letter_reason_characters_max')),
            v_kiosk_id)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION sp_record_dead_letter(
    p_topic text, p_payload bytea, p_error_code text, p_reason text, p_kiosk_id text)
RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_store_dead_letter(
        p_topic, substring(p_payload FROM 1 FOR ledger_limit('dead_letter_bytes_max')),
        length(p_payload), sha256(p_payload), p_error_code, p_reason, p_kiosk_id,
        ledger_limit('dead_letters_per_kiosk_minute_max'))
$$;

CREATE OR REPLACE FUNCTION sp_record_dead_letters(
    p_letters jsonb,
    p_per_minute_max integer
        DEFAULT ledger_limit('dead_letters_per_kiosk_minute_max'))
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    r record;
    v_ids jsonb := '[]';
BEGIN
    IF jsonb_typeof(p_letters) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_letters must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR r IN
        SELECT * FROM jsonb_to_recordset(p_letters) AS x(
            topic text, payload_hex text, payload_length bigint, payload_sha256 text,
            error_code text, reason text, kiosk_id text)
    LOOP
        -- jsonb_build_array: a null id (only counted) stays a JSON null in the array
        v_ids := v_ids || jsonb_build_array(ledger_store_dead_letter(
            r.topic, decode(coalesce(r.payload_hex, ''), 'hex'), r.payload_length,
            decode(r.payload_sha256, 'hex'), r.error_code, r.reason, r.kiosk_id,
            p_per_minute_max));
    END LOOP;
    RETURN v_ids;
END
$$;

CREATE OR REPLACE FUNCTION cleanup_expired_dead_letters() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_kept interval := make_interval(days => ledger_limit('dead_letter_days_max'));
    v_deleted integer;
BEGIN
    DELETE FROM dead_letters WHERE received_at < now() - v_kept;
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    DELETE FROM dead_letter_counts WHERE minute < now() - v_kept;
    RETURN v_deleted;
END
$$;

CREATE OR REPLACE FUNCTION sp_record_kiosk_status(
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
       SET state = p_state, state_at = v_at,
           firmware = left(p_firmware, ledger_limit('name_characters_max')),
           last_seen_at = greatest(last_seen_at, to_timestamp(p_received_at_ms / 1000.0))
     WHERE kiosk_id = p_kiosk_id AND (state_at IS NULL OR state_at <= v_at);
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION sp_record_scans(p_scans jsonb) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_count integer;
BEGIN
    INSERT INTO nfc_scan_log (kiosk_id, card_id, scan_status, scan_timestamp, reader, duration_ms)
    SELECT x.kiosk_id, x.card_uid, x.status, to_timestamp(x.scanned_at_ms / 1000.0),
           left(x.reader, ledger_limit('name_characters_max')), x.duration_ms
      FROM jsonb_to_recordset(p_scans) AS x(
               kiosk_id text, card_uid text, status text, scanned_at_ms bigint, reader text,
               duration_ms integer);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 8. Privileges: the new helpers are the owner's (called from the SECURITY DEFINER procedures);
-- ledger_limit is also both services', since the procedures' parameter defaults call it in the
-- caller's name; sp_handle_request is both services' (as sp_process_bar_order and _recharge are).

REVOKE EXECUTE ON FUNCTION
    ledger_outcome(text, text, text, text, timestamptz, text, uuid, bigint, bigint, uuid, boolean),
    ledger_log_entries(ledger_log_entry[]),
    ledger_log(timestamptz, text, text, text, text, bigint, bigint, bigint, text, jsonb, text,
               uuid, text, text),
    ledger_cache_outcomes(ledger_cache_entry[], timestamptz),
    ledger_counter_account(text, text, text, text),
    ledger_source_function(text),
    ledger_decide_request(ledger_request, text, bigint, bigint, bigint, bigint, bigint),
    ledger_write_requests(jsonb, ledger_decided[], text[], bigint[], boolean[], bigint, bigint,
                          timestamptz),
    ledger_credit_from_stripe(cards, bigint, text, text, text, text, timestamptz),
    ledger_take_back(cards, bigint, text, text, text, text, timestamptz),
    ledger_stripe_metadata_fallback(text, text, text, text, bigint, text),
    sp_handle_request(jsonb, bigint, bigint, bigint),
    ledger_limit(text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint), ledger_limit(text)
    TO festival_service, festival_api;
