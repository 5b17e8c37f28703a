-- Revision 0016's downgrade: back to revision 0015 exactly. It refuses while voids or card
-- swaps are recorded: their transactions and claims cannot be expressed in revision 0015, and
-- the ledger is append-only.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM voids) OR EXISTS (SELECT 1 FROM card_swaps)
       OR EXISTS (SELECT 1 FROM processed_requests WHERE kind IN ('void', 'card_swap')) THEN
        RAISE EXCEPTION 'revision 0016 cannot be downgraded: voids or card swaps exist'
            USING ERRCODE = 'object_in_use';
    END IF;
END
$$;

DROP FUNCTION sp_card_swap(text, text, text, bigint);
DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer);
DROP FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint, integer, integer);
DROP FUNCTION ledger_process_counter_request(jsonb, bigint, integer, boolean);
DROP FUNCTION ledger_decide_void(ledger_request, processed_requests, bar_orders, bigint, boolean,
                                 bigint, timestamptz, integer);
DROP FUNCTION ledger_decide_card_swap(ledger_request, cards, cards, text, text, bigint);
DROP FUNCTION ledger_blocked_by_the_system(text);
DROP FUNCTION ledger_replacement_of(text);

ALTER FUNCTION ledger_process_plain_requests(jsonb, bigint, bigint, bigint, integer)
    RENAME TO ledger_process_requests;

-- revision 0011's
CREATE FUNCTION sp_process_batch(
    p_requests jsonb,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'),
    p_menu_grace_s integer DEFAULT ledger_limit('menu_grace_s'))
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
        p_menu_grace_s)
$$;

-- One kiosk or POS request (an object of the form sp_process_batch takes), in its own
-- transaction: what Ledger.apply calls, for the consumer and the API's POS endpoints alike.
CREATE FUNCTION sp_handle_request(
    p_request jsonb,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'),
    p_menu_grace_s integer DEFAULT ledger_limit('menu_grace_s'))
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(p_request), p_balance_cents_max, p_topup_cents_max,
        p_return_cents_max, p_menu_grace_s) -> 0
$$;

REVOKE EXECUTE ON FUNCTION
    sp_process_batch(jsonb, bigint, bigint, bigint, integer),
    sp_handle_request(jsonb, bigint, bigint, bigint, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer)
    TO festival_service;
GRANT EXECUTE ON FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer)
    TO festival_service, festival_api;

-- revision 0013's
CREATE OR REPLACE FUNCTION ledger_write_requests(
    p_requests jsonb, p_decided ledger_decided[],
    p_card_uids text[], p_card_balances bigint[], p_card_debts bigint[],
    p_cards_changed boolean[], p_deposit_account_id bigint, p_deposit_balance_cents bigint,
    p_at timestamptz)
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
        SELECT x.*, o.flag, o.outcome, o.deposit_delta_cents, o.debt_delta_cents,
               x.ordinality AS position,
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
        UPDATE cards k SET balance_cents = u.balance_cents, debt_cents = u.debt_cents,
                           updated_at = p_at
          FROM unnest(p_card_uids, p_card_balances, p_card_debts, p_cards_changed)
               AS u(card_uid, balance_cents, debt_cents, changed)
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
        -- 0013: what the card's debt moves goes to its receivable account (receivable:<uid>,
        -- whose postings sum to minus the debt), and the counter account gets the rest, so
        -- every transaction still sums to zero: an offline sale with a shortfall posts the card
        -- (what it paid), its receivable (the shortfall) and the sales account (the total); a
        -- top-up on a card with a debt posts the receivable first, the card the rest.
        INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
        SELECT a.transaction_id, p.account_id, p.amount_cents, p.balance_after_cents
          FROM approved a
          JOIN cards c ON c.card_uid = a.card_uid
          JOIN accounts s ON s.name = a.counter_account
          LEFT JOIN accounts d ON a.debt_delta_cents <> 0
                              AND d.name = 'receivable:' || a.card_uid
         -- 0005: the card pays (or gets) the total; the sales account gets the sales lines; the
         -- deposit account the deposits minus the returns. A plain order posts exactly as in
         -- 0002 (card and sales, always); an order with deposit lines skips a zero posting.
         CROSS JOIN LATERAL (VALUES
              (c.account_id, a.delta_cents, a.new_balance_cents, true),
              (s.account_id,
               -a.delta_cents + coalesce(a.debt_delta_cents, 0)
               - coalesce(a.deposit_delta_cents, 0), NULL::bigint,
               a.deposit_delta_cents IS NULL),
              (p_deposit_account_id, a.deposit_delta_cents, NULL::bigint, false),
              (d.account_id, -a.debt_delta_cents, NULL::bigint, false))
              AS p(account_id, amount_cents, balance_after_cents, always)
         WHERE p.always OR p.amount_cents <> 0
        RETURNING 1
    ), offline AS (
        -- 0013: every approved offline sale, with what the card could not pay (the 24-hour
        -- bound, monitoring)
        INSERT INTO offline_sales (
            request_id, kiosk_id, card_uid, config_version, total_cents, shortfall_cents,
            applied_at)
        SELECT a.request_id, a.kiosk_id, a.card_uid, a.config_version::integer, a.total_cents,
               greatest(coalesce(a.debt_delta_cents, 0), 0), p_at
          FROM approved a WHERE a.type = 'bar_order' AND coalesce(a.offline, false)
        RETURNING 1
    ), cited_items AS MATERIALIZED (
        -- 0011: the menu lines of each config an approved order cites, read once per config by
        -- its key (as the price check), then looked up in memory for every line
        SELECT i.kiosk_id, i.version, i.sku, i.vat_rate_bp, i.category
          FROM (SELECT DISTINCT a.kiosk_id, a.config_version FROM approved a
                 WHERE a.type = 'bar_order' AND a.source = 'mqtt'
                   AND a.config_version IS NOT NULL) c
         CROSS JOIN LATERAL (
               SELECT * FROM kiosk_config_items i
                WHERE i.kiosk_id = c.kiosk_id AND i.version = c.config_version
               OFFSET 0) i
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
            line_total_cents, vat_rate_bp, category)
        SELECT (a.outcome ->> 'order_id')::uuid, i.line_no, i.name, i.sku, i.quantity,
               i.unit_price_cents, coalesce(i.is_deposit, false), coalesce(i.is_return, false),
               CASE WHEN coalesce(i.is_return, false) THEN -1 ELSE 1 END
               * i.quantity * i.unit_price_cents,
               -- 0011: the VAT rate and category of the menu line it was sold from (the check
               -- found every line of an approved order on its menu; no menu: NULL)
               m.vat_rate_bp, m.category
          FROM approved a
         CROSS JOIN LATERAL ROWS FROM (
              jsonb_to_recordset(a.items) AS (
                  name text, sku text, quantity integer, unit_price_cents bigint,
                  is_deposit boolean, is_return boolean))
              WITH ORDINALITY AS i(
                  name, sku, quantity, unit_price_cents, is_deposit, is_return, line_no)
          LEFT JOIN cited_items m
                 ON a.source = 'mqtt' AND m.kiosk_id = a.kiosk_id
                AND m.version = a.config_version AND m.sku = i.sku
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
      CROSS JOIN audit CROSS JOIN cache
      CROSS JOIN (SELECT count(*) FROM offline) offline_written;

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

-- revision 0013's
CREATE OR REPLACE FUNCTION ledger_check_accounts(p_limit integer DEFAULT 20) RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT format('%s account %s: its postings sum to %s cents, below zero (the wrong sign)',
                  a.kind, a.name, s.total)
      FROM accounts a
     CROSS JOIN LATERAL (SELECT coalesce(sum(p.amount_cents), 0) AS total
                           FROM postings p WHERE p.account_id = a.account_id) s
     WHERE a.kind IN ('sales', 'deposit') AND s.total < 0
     ORDER BY a.name LIMIT p_limit;

    RETURN QUERY
    SELECT format('deposit account %s: cached balance %s cents, but its postings sum to %s cents',
                  a.name, d.balance_cents, s.total)
      FROM deposit_balances d
      JOIN accounts a ON a.account_id = d.account_id
     CROSS JOIN LATERAL (SELECT coalesce(sum(p.amount_cents), 0) AS total
                           FROM postings p WHERE p.account_id = d.account_id) s
     WHERE d.balance_cents IS DISTINCT FROM s.total
     ORDER BY a.name LIMIT p_limit;

    RETURN QUERY
    SELECT format('deposit account %s has no cached balance', a.name)
      FROM accounts a
     WHERE a.kind = 'deposit'
       AND NOT EXISTS (SELECT 1 FROM deposit_balances d WHERE d.account_id = a.account_id)
     ORDER BY a.name LIMIT p_limit;

    RETURN QUERY
    SELECT format('cached deposit balance of account %s, which is not a deposit account',
                  d.account_id)
      FROM deposit_balances d
     WHERE NOT EXISTS (SELECT 1 FROM accounts a
                        WHERE a.account_id = d.account_id AND a.kind = 'deposit')
     ORDER BY d.account_id LIMIT p_limit;

    -- 0013: a card's cached debt is minus what its receivable account's postings sum to, a
    -- card never holds a balance and a debt at once, and no receivable is in credit
    RETURN QUERY
    SELECT format('card %s: cached debt %s cents, but its receivable postings sum to %s cents',
                  c.card_uid, c.debt_cents, s.total)
      FROM cards c
      LEFT JOIN accounts a ON a.name = 'receivable:' || c.card_uid
     CROSS JOIN LATERAL (SELECT coalesce(sum(p.amount_cents), 0) AS total
                           FROM postings p WHERE p.account_id = a.account_id) s
     WHERE (c.debt_cents > 0 OR a.account_id IS NOT NULL) AND c.debt_cents <> -s.total
     ORDER BY c.card_uid LIMIT p_limit;

    RETURN QUERY
    SELECT format('card %s holds a balance of %s cents and a debt of %s cents at once',
                  c.card_uid, c.balance_cents, c.debt_cents)
      FROM cards c WHERE c.balance_cents <> 0 AND c.debt_cents <> 0
     ORDER BY c.card_uid LIMIT p_limit;

    RETURN QUERY
    SELECT format('receivable account %s belongs to no card', a.name)
      FROM accounts a
     WHERE a.kind = 'receivable'
       AND NOT EXISTS (SELECT 1 FROM cards c WHERE 'receivable:' || c.card_uid = a.name)
     ORDER BY a.name LIMIT p_limit;
END
$$;

-- revision 0014's
CREATE OR REPLACE FUNCTION ledger_limit(p_name text) RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    CASE p_name
        WHEN 'balance_cents_max' THEN RETURN 150000;
        WHEN 'topup_cents_max' THEN RETURN 100000;
        WHEN 'return_cents_max' THEN RETURN 2000;
        -- 0011: how long after a config is superseded an order priced from it is accepted
        -- (FESTIVAL_MENU_GRACE_S; protocol/limits.py MENU_GRACE_S_DEFAULT)
        WHEN 'menu_grace_s' THEN RETURN 600;
        -- 0013: how many accepted SUN counters below a wristband's highest are kept for the
        -- offline rule (cloud/limits.py SUN_COUNTER_WINDOW; docs/protocol.md)
        WHEN 'sun_counter_window' THEN RETURN 1024;
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

-- revision 0009's
CREATE OR REPLACE FUNCTION ledger_source_function(p_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_type
        WHEN 'bar_order' THEN 'process-bar-order'
        WHEN 'checkpoint_recharge' THEN 'process-checkpoint-recharge'
    END
$$;

DROP TYPE ledger_counter_decision;
ALTER TYPE ledger_request
    DROP ATTRIBUTE old_card_uid,
    DROP ATTRIBUTE original_request_id,
    DROP ATTRIBUTE old_sun_counter,
    DROP ATTRIBUTE old_sun_failure,
    DROP ATTRIBUTE decided;

DROP TABLE card_swaps;
DROP TABLE voids;
ALTER TABLE bar_orders DROP COLUMN created_at_ms;
ALTER TABLE cards
    DROP CONSTRAINT cards_replaced_by_another,
    DROP CONSTRAINT cards_replaced_is_blocked,
    DROP COLUMN replaced_by;

ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_kind_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_kind_check
    CHECK (kind IN ('bar_order', 'checkpoint_recharge'));

ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return'));
