-- Revision 0013: offline sales, the cloud's half (PROTOCOL.md 1.1 "Offline sales", the order of
-- checks, debt_cents).
--
--   * cards.debt_cents: what a card owes, cached like balance_cents; a card never holds a balance
--     and a debt at once (cards_balance_or_debt). The debt is a receivable of the festival, one
--     account per indebted card (kind 'receivable', 'receivable:<uid>'), whose postings sum to
--     minus the card's debt: every transaction still sums to zero, and festival-cloud check
--     compares the cache with the postings.
--   * offline_sales: every approved offline sale with its shortfall (what became a debt). The
--     24-hour bound per kiosk and GET /api/monitoring/offline read it.
--   * The decide step: an offline bar order (ledger_request.offline) is judged, after
--     PRICE_MISMATCH, by the config it cites (published to this kiosk, with an offline policy,
--     total within sale_max_cents) and by the kiosk's bound (more than 2 x kiosk_max_cents of
--     debts created by its offline sales within 24 hours): else OFFLINE_LIMIT_EXCEEDED, a
--     rejection. One it allows skips the card rules: approved, an unknown card opened by it.
--     Every request now works on the card's net position (balance - debt): the card pays what
--     it holds, the rest is its debt; a top-up pays the debt first. Outcomes carry debt_cents.
--   * Stripe top-ups pay the debt first too (ledger_credit_from_stripe).
--   * Deny-list: cards with a debt are on it (after lost/stolen and other blocked cards, largest
--     debts first), and a debt appearing or paid off bumps denylist_state.changes (a trigger).
--
-- Lock order: unchanged (cards, then the deposit account, then kiosks). offline_sales is
-- append-only and read without locks; the receivable accounts are created like the other
-- system accounts, before the claims.

-- ---------------------------------------------------------------------------------------------
-- 1. Debts, the receivable accounts, the offline sales

ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit', 'loss',
                    'receivable'));

ALTER TABLE cards
    ADD COLUMN debt_cents bigint NOT NULL DEFAULT 0
        CONSTRAINT cards_debt_not_negative CHECK (debt_cents >= 0),
    ADD CONSTRAINT cards_balance_or_debt CHECK (balance_cents = 0 OR debt_cents = 0);
CREATE INDEX cards_with_debt ON cards (debt_cents DESC) WHERE debt_cents > 0;

CREATE TABLE offline_sales (
    request_id text PRIMARY KEY,
    kiosk_id text NOT NULL,
    card_uid text NOT NULL,
    config_version integer NOT NULL,
    total_cents bigint NOT NULL CHECK (total_cents >= 0),
    -- what the card could not pay: the debt this sale created
    shortfall_cents bigint NOT NULL CHECK (shortfall_cents BETWEEN 0 AND total_cents),
    applied_at timestamptz NOT NULL
);
CREATE INDEX offline_sales_kiosk_applied ON offline_sales (kiosk_id, applied_at);
CREATE INDEX offline_sales_applied ON offline_sales (applied_at);
CREATE TRIGGER offline_sales_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON offline_sales
    FOR EACH STATEMENT EXECUTE FUNCTION trg_forbid_change();

-- A debt appearing or paid off changes the deny-list (revision 0010's trigger function).
CREATE TRIGGER cards_denylist_debt_changed
    AFTER UPDATE OF debt_cents ON cards
    FOR EACH ROW WHEN ((OLD.debt_cents > 0) IS DISTINCT FROM (NEW.debt_cents > 0))
    EXECUTE FUNCTION trg_denylist_changed();

-- ---------------------------------------------------------------------------------------------
-- 2. What the procedures read of a request and write of a decision

ALTER TYPE ledger_request ADD ATTRIBUTE offline boolean;
-- what the card's debt moves by (positive: it grows); 0 for anything else
ALTER TYPE ledger_decided ADD ATTRIBUTE debt_delta_cents bigint;

-- ---------------------------------------------------------------------------------------------
-- 3. Decide, write, and the batch: revision 0011's, with offline sales and debts (marked 0013)

DROP FUNCTION ledger_decide_request(ledger_request, text, bigint, bigint, bigint, bigint, bigint,
                                    text);
DROP FUNCTION ledger_write_requests(jsonb, ledger_decided[], text[], bigint[], boolean[], bigint,
                                    bigint, timestamptz);

CREATE FUNCTION ledger_decide_request(
    r ledger_request, p_card_status text, p_balance_cents bigint,
    p_deposit_balance_cents bigint, p_balance_cents_max bigint, p_topup_cents_max bigint,
    p_return_cents_max bigint, p_price_problem text, p_offline_problem text)
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
    -- 0011: a bar order that does not match the menu of the config it cites (the batch found
    -- why: ledger_price_problems) is rejected before any rule of the card. Nothing moves.
    IF p_price_problem IS NOT NULL THEN
        v_decision.error_code := 'PRICE_MISMATCH';
        v_decision.message := p_price_problem;
        v_decision.delta_cents := 0;
        v_decision.deposit_delta_cents := NULL;
        v_decision.with_order := false;
        RETURN v_decision;
    END IF;
    -- 0013: an offline sale its cited config does not allow (ledger_offline_problem, or the
    -- kiosk's 24-hour bound) is rejected next; one it allows happened: approved whatever the
    -- card's balance or status (the card rules are skipped), an unknown card opened by it.
    IF r.type = 'bar_order' AND coalesce(r.offline, false) THEN
        IF p_offline_problem IS NOT NULL THEN
            v_decision.error_code := 'OFFLINE_LIMIT_EXCEEDED';
            v_decision.message := p_offline_problem;
            v_decision.delta_cents := 0;
            v_decision.deposit_delta_cents := NULL;
            v_decision.with_order := false;
            RETURN v_decision;
        END IF;
        v_decision.message := 'Paid (offline sale)';
        v_decision.opens_card := p_card_status IS NULL;
        RETURN v_decision;
    END IF;
    IF v_decision.opens_card THEN
        RETURN v_decision;
    END IF;

    -- The rules, in this order, for every type. (0013: p_balance_cents is the card's net
    -- position, its balance minus its debt: a card with a debt has nothing to pay with, and the
    -- maximum balance applies to what is left after the debt is paid.)
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
    -- (0013: only a payment needs funds; a top-up on a card with a debt pays it off)
    ELSIF v_decision.delta_cents < 0 AND p_balance_cents + v_decision.delta_cents < 0 THEN
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

CREATE FUNCTION ledger_write_requests(
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

CREATE OR REPLACE FUNCTION ledger_process_requests(
    p_requests jsonb, p_balance_cents_max bigint, p_topup_cents_max bigint,
    p_return_cents_max bigint, p_menu_grace_s integer)
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
    -- 0013: the batch's cards' debts as decided so far, and per kiosk with offline sales in the
    -- batch, the debts its offline sales created within 24 hours (the bound)
    c_debt bigint[];
    v_net bigint;
    v_offline_problem text;
    o_kiosk text[] := '{}';
    o_created bigint[] := '{}';
    v_offline_index integer;
    v_policy jsonb;
    v_debt_delta bigint;
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
    -- 0011: per request, in input order, why it does not match its menu (NULL: it does, or it
    -- is not checked); and per kiosk, the config version its latest new request cites
    v_price_problems text[];
    v_position integer := 0;
    v_status text;
    k_id text[] := '{}';
    k_version integer[] := '{}';
    v_kiosk_index integer;
    v_outcomes jsonb;
BEGIN
    IF jsonb_typeof(p_requests) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_requests must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_balance_cents_max IS NULL OR p_balance_cents_max < 0
       OR p_topup_cents_max IS NULL OR p_topup_cents_max < 1
       OR p_return_cents_max IS NULL OR p_return_cents_max < 0
       OR p_menu_grace_s IS NULL OR p_menu_grace_s < 0 THEN
        RAISE EXCEPTION 'invalid limits' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. What the batch touches: request ids, cards, system accounts.
    SELECT array_agg(x ->> 'request_id'),
           array_agg(DISTINCT x ->> 'card_uid'),
           array_agg(DISTINCT ledger_counter_account(
               x ->> 'type', x ->> 'kiosk_id', x ->> 'payment_method', x ->> 'checkpoint_id'))
           -- 0013: an offline sale's card may get a debt: its receivable account
           || coalesce(array_agg(DISTINCT 'receivable:' || (x ->> 'card_uid'))
                           FILTER (WHERE x ->> 'type' = 'bar_order'
                                     AND (x ->> 'offline')::boolean), '{}'),
           -- 0005: a line's flag is true when it is there (the protocol's form leaves out false)
           coalesce(bool_or(x ->> 'type' = 'bar_order'
                            AND (x -> 'items' @> '[{"is_deposit": true}]'
                                 OR x -> 'items' @> '[{"is_return": true}]')), false)
      INTO v_request_ids, v_card_uids, v_names, v_has_deposit_lines
      FROM jsonb_array_elements(p_requests) x;

    -- 2. Lock every card of the batch, in card_uid order (no deadlock between batches).
    SELECT array_agg(k.card_uid ORDER BY k.card_uid), array_agg(k.balance_cents ORDER BY k.card_uid),
           array_agg(k.status ORDER BY k.card_uid), array_agg(false),
           array_agg(k.debt_cents ORDER BY k.card_uid)
      INTO c_uid, c_balance, c_status, c_changed, c_debt
      FROM (SELECT cards.card_uid, cards.balance_cents, cards.status, cards.debt_cents
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

    -- 4b. (0011) The price check of every bar order against the menu of the config it cites:
    -- one statement for the batch, index lookups only (kiosk_config_items).
    v_price_problems := ledger_price_problems(p_requests, p_menu_grace_s);

    -- 5. Decide every request in order, in memory. Only decisions here; rows are written by
    -- ledger_write_requests.
    FOR r IN SELECT * FROM jsonb_populate_recordset(NULL::ledger_request, p_requests) LOOP
        v_position := v_position + 1;
        v_index := array_position(e_id, r.request_id);
        IF v_index IS NOT NULL THEN
            -- Seen before: checked like any request (a malformed one fails the batch), then the
            -- stored outcome again, or a conflict. Nothing changes.
            PERFORM ledger_decide_request(r, NULL, NULL, NULL, p_balance_cents_max,
                                          p_topup_cents_max, p_return_cents_max, NULL, NULL);
            IF e_sha[v_index] = decode(r.payload_sha256, 'hex') THEN
                v_decided := v_decided || ROW(
                    'replayed', e_outcome[v_index] || '{"replayed": true}', NULL, NULL
                )::ledger_decided;
            ELSE
                v_decided := v_decided || ROW('conflict', ledger_outcome(
                    r.request_id, 'rejected', 'IDEMPOTENCY_CONFLICT',
                    'Request id already used for a different request', v_started, r.card_uid),
                    NULL, NULL)::ledger_decided;
            END IF;
            CONTINUE;
        END IF;

        -- 0013: an offline sale is judged by the config it cites, then by the kiosk's bound:
        -- more than twice the cited kiosk_max_cents of debts created by its offline sales
        -- within 24 hours (those earlier in this batch included)
        v_offline_problem := NULL;
        IF r.type = 'bar_order' AND coalesce(r.offline, false)
           AND v_price_problems[v_position] IS NULL THEN
            v_policy := NULL;
            IF r.config_version IS NULL THEN
                v_offline_problem := 'Offline sale refused: it cites no config_version';
            ELSE
                SELECT c.document -> 'offline' INTO v_policy
                  FROM kiosk_configs c
                 WHERE c.kiosk_id = r.kiosk_id AND c.version = r.config_version
                   AND c.published_at IS NOT NULL;
                IF NOT FOUND THEN
                    v_offline_problem := format(
                        'Offline sale refused: config version %s was never published to this kiosk',
                        r.config_version);
                ELSIF v_policy IS NULL OR jsonb_typeof(v_policy) <> 'object' THEN
                    v_offline_problem := format(
                        'Offline sale refused: config version %s allows no offline sales',
                        r.config_version);
                ELSIF r.total_cents > (v_policy ->> 'sale_max_cents')::bigint THEN
                    v_offline_problem := format(
                        'Offline sale refused: %s is over the offline limit of %s per sale',
                        ledger_amount_text(r.total_cents),
                        ledger_amount_text((v_policy ->> 'sale_max_cents')::bigint));
                END IF;
            END IF;
            IF v_offline_problem IS NULL THEN
                v_offline_index := array_position(o_kiosk, r.kiosk_id);
                IF v_offline_index IS NULL THEN
                    o_kiosk := o_kiosk || r.kiosk_id;
                    o_created := o_created || (
                        SELECT coalesce(sum(s.shortfall_cents), 0)::bigint FROM offline_sales s
                         WHERE s.kiosk_id = r.kiosk_id
                           AND s.applied_at > v_started - interval '24 hours');
                    v_offline_index := cardinality(o_kiosk);
                END IF;
                IF o_created[v_offline_index]
                   > 2 * (v_policy ->> 'kiosk_max_cents')::bigint THEN
                    v_offline_problem := format(
                        'Offline sale refused: this kiosk''s offline sales created %s of debts '
                        || 'within 24 hours, more than twice its offline limit of %s',
                        ledger_amount_text(o_created[v_offline_index]),
                        ledger_amount_text((v_policy ->> 'kiosk_max_cents')::bigint));
                END IF;
            END IF;
        END IF;

        v_card_index := array_position(c_uid, r.card_uid);
        v_decision := ledger_decide_request(
            r, c_status[v_card_index], c_balance[v_card_index] - c_debt[v_card_index],
            v_deposit_balance, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
            v_price_problems[v_position], v_offline_problem);
        IF v_decision.opens_card THEN
            v_card := ledger_open_card(r.card_uid);
            c_uid := c_uid || v_card.card_uid::text;
            c_balance := c_balance || v_card.balance_cents;
            c_status := c_status || v_card.status;
            c_changed := c_changed || false;
            c_debt := c_debt || v_card.debt_cents;
            v_card_index := cardinality(c_uid);
            v_decision := ledger_decide_request(r, v_card.status, v_card.balance_cents,
                                                v_deposit_balance,
                                       p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
                                       v_price_problems[v_position], v_offline_problem);
        END IF;

        v_previous := c_balance[v_card_index];
        v_new := v_previous;
        v_tx := NULL;
        v_order := NULL;
        v_debt_delta := 0;
        IF v_decision.error_code IS NULL THEN
            v_tx := ledger_uuid7();
            IF v_decision.with_order THEN
                v_order := ledger_uuid7();
            END IF;
            -- 0013: the net position moves; a negative one is a debt, a positive one the
            -- balance (never both): a payment takes the balance first, the rest is a debt; a
            -- top-up pays the debt first, the rest is the balance
            v_net := v_previous - c_debt[v_card_index] + v_decision.delta_cents;
            v_new := greatest(v_net, 0);
            v_debt_delta := greatest(-v_net, 0) - c_debt[v_card_index];
            c_debt[v_card_index] := greatest(-v_net, 0);
            c_balance[v_card_index] := v_new;
            c_changed[v_card_index] := true;
            IF coalesce(r.offline, false) THEN
                o_created[array_position(o_kiosk, r.kiosk_id)] :=
                    o_created[array_position(o_kiosk, r.kiosk_id)] + greatest(v_debt_delta, 0);
            END IF;
            IF v_decision.deposit_delta_cents IS NOT NULL THEN
                v_deposit_balance := v_deposit_balance + v_decision.deposit_delta_cents;
                v_deposit_changed := true;
            END IF;
        END IF;
        -- 0011: PRICE_MISMATCH is a rejection: no balances in its outcome (PROTOCOL.md results)
        v_status := CASE WHEN v_decision.error_code IS NULL THEN 'approved'
                         WHEN v_decision.error_code IN ('PRICE_MISMATCH',
                                                        'OFFLINE_LIMIT_EXCEEDED') THEN 'rejected'
                         ELSE 'declined' END;
        IF v_status = 'rejected' THEN
            v_previous := NULL;
            v_new := NULL;
        END IF;
        v_outcome := ledger_outcome(
            r.request_id, v_status, v_decision.error_code, v_decision.message, v_started,
            r.card_uid, v_tx, v_previous, v_new, v_order)
            -- 0013: the card's debt after it, an integer exactly when the balances are
            || jsonb_build_object('debt_cents', CASE WHEN v_new IS NOT NULL
                                                     THEN c_debt[v_card_index] END);
        -- 0011: the config version a kiosk runs is what its latest new request cites (one
        -- that no config can have, above integer, counts as none)
        IF r.source = 'mqtt' THEN
            v_kiosk_index := array_position(k_id, r.kiosk_id);
            IF v_kiosk_index IS NULL THEN
                k_id := k_id || r.kiosk_id;
                v_kiosk_index := cardinality(k_id);
            END IF;
            k_version[v_kiosk_index] := CASE WHEN r.config_version <= 2147483647
                                             THEN r.config_version::integer END;
        END IF;
        v_decided := v_decided || ROW(
            'new', v_outcome,
            CASE WHEN v_decision.error_code IS NULL THEN v_decision.deposit_delta_cents END,
            v_debt_delta
        )::ledger_decided;
        v_sha := decode(r.payload_sha256, 'hex');
        e_id := e_id || r.request_id;
        e_sha := e_sha || v_sha;
        e_outcome := e_outcome || v_outcome;
    END LOOP;

    -- 6. Write it all (and track the seqs, last).
    v_outcomes := ledger_write_requests(
        p_requests, v_decided, c_uid, c_balance, c_debt, c_changed, v_deposit_account_id,
        CASE WHEN v_deposit_changed THEN v_deposit_balance END, v_started);

    -- 7. (0011) The config version each kiosk runs, only where it changed: its row is already
    -- locked by the seq tracking above (kiosk rows come last in the lock order).
    IF cardinality(k_id) > 0 THEN
        PERFORM sp_note_kiosk_config_version(u.kiosk_id, u.config_version)
           FROM unnest(k_id, k_version) AS u(kiosk_id, config_version)
           JOIN kiosks k ON k.kiosk_id = u.kiosk_id
          WHERE k.config_version IS DISTINCT FROM u.config_version
          ORDER BY u.kiosk_id;
    END IF;
    RETURN v_outcomes;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 4. A Stripe top-up pays the card's debt first (revision 0009's, marked 0013)

CREATE OR REPLACE FUNCTION ledger_credit_from_stripe(
    p_card cards, p_amount_cents bigint, p_event_id text, p_topup_id text, p_session_id text,
    p_payment_intent_id text, p_at timestamptz)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_tx uuid := ledger_uuid7();
    -- 0013: the debt first, the rest to the balance
    v_paid_debt bigint := least(p_card.debt_cents, p_amount_cents);
    v_new bigint := p_card.balance_cents + p_amount_cents - least(p_card.debt_cents, p_amount_cents);
BEGIN
    UPDATE cards SET balance_cents = v_new, debt_cents = debt_cents - v_paid_debt,
                     updated_at = p_at
     WHERE card_uid = p_card.card_uid;
    INSERT INTO transactions (transaction_id, kind, stripe_event_id, topup_id, created_at)
    VALUES (v_tx, 'stripe_recharge', p_event_id, p_topup_id, p_at);
    INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
    SELECT * FROM (VALUES
        (v_tx, p_card.account_id, p_amount_cents - v_paid_debt, v_new),
        (v_tx, ledger_system_account('stripe:clearing'), -p_amount_cents, NULL::bigint),
        (v_tx, CASE WHEN v_paid_debt > 0
                    THEN ledger_system_account('receivable:' || p_card.card_uid) END,
         v_paid_debt, NULL::bigint)) p
     WHERE p.column2 = p_card.account_id OR p.column3 <> 0;
    INSERT INTO recharges (
        recharge_id, transaction_id, card_id, amount_cents, payment_method, stripe_session_id,
        stripe_payment_intent_id, source, created_at)
    VALUES (ledger_uuid7(), v_tx, p_card.card_uid, p_amount_cents, 'stripe', p_session_id,
            p_payment_intent_id, 'stripe', p_at);
    RETURN v_tx;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 4b. festival-cloud check: debts against their postings (revision 0005's, marked 0013)

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

-- ---------------------------------------------------------------------------------------------
-- 5. The deny-list: blocked cards, then cards with a debt (revision 0010's, marked 0013)

CREATE OR REPLACE FUNCTION sp_issue_denylist() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_changes bigint;
    v_uids ledger_card_uid[];
    v_latest denylists%ROWTYPE;
    v_version integer;
BEGIN
    SELECT changes INTO v_changes FROM denylist_state FOR UPDATE;
    -- 0013: over 6000, cards blocked as lost or stolen first, then the other blocked cards,
    -- then the largest debts
    SELECT coalesce(array_agg(card_uid ORDER BY card_uid), '{}') INTO v_uids
    FROM (
        SELECT card_uid FROM cards WHERE status <> 'active' OR debt_cents > 0
        ORDER BY (status <> 'active' AND coalesce(blocked_reason, '') ~* '(lost|stolen)') DESC,
                 (status <> 'active') DESC, debt_cents DESC, updated_at DESC
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

-- ---------------------------------------------------------------------------------------------
-- 6. Privileges: the new helpers are the owner's; the roles read the new table.

REVOKE EXECUTE ON FUNCTION
    ledger_decide_request(ledger_request, text, bigint, bigint, bigint, bigint, bigint, text,
                          text),
    ledger_write_requests(jsonb, ledger_decided[], text[], bigint[], bigint[], boolean[], bigint,
                          bigint, timestamptz)
FROM PUBLIC;
GRANT SELECT ON offline_sales TO festival_service, festival_api;
