-- Revision 0011: price enforcement against the menus the cloud sent (PROTOCOL.md 1.1 "Menus",
-- the order of checks, PRICE_MISMATCH).
--
--   * kiosk_config_items: every menu line of every config ever issued, keyed by (kiosk_id,
--     version, sku), filled by a trigger when kiosk_configs gets a row (and here, for the
--     configs 0010 issued). The price check and the write step look lines up there by key,
--     never by reading a config's whole document.
--   * The decide step (ledger_process_requests -> ledger_decide_request): a bar order sent by a
--     kiosk (source 'mqtt') is checked against the menu of the config it cites, after the
--     consumer's checks (STALE_REQUEST is the last of those) and before any rule of the card:
--     ledger_price_problems finds, for the whole batch in one statement, why each order does not
--     match; ledger_decide_request turns that into PRICE_MISMATCH, a rejection (stored like the
--     others, nothing charged, replays answer the same). The seed-compatible POS endpoint's
--     lines carry no SKU (source 'http'): not checked.
--   * The write step keeps each line's vat_rate_bp and category from its menu line, and records
--     the config version a kiosk runs (kiosks.config_version, through
--     sp_note_kiosk_config_version, only when it changes).
--   * The grace period is a limit like the others: ledger_limit('menu_grace_s'), the default of
--     the new last parameter p_menu_grace_s of sp_process_batch and sp_handle_request (the
--     Python callers pass FESTIVAL_MENU_GRACE_S). The seed's procedures keep their signatures.
--
-- Lock order: unchanged. kiosk_configs and kiosk_config_items are never updated (read without
-- locks); kiosks.config_version is written last, on the kiosk rows the seq tracking locked.

-- ---------------------------------------------------------------------------------------------
-- 1. The limit

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
-- 2. What the procedures read of a request: also the config it cites and when it was made.
-- config_version is a bigint, as on the wire: a version no config can have (above integer)
-- is a PRICE_MISMATCH, never an error that fails the batch.

ALTER TYPE ledger_request
    ADD ATTRIBUTE config_version bigint,
    ADD ATTRIBUTE created_at_ms bigint;

-- ---------------------------------------------------------------------------------------------
-- 3. The menu lines of every config issued

CREATE TABLE kiosk_config_items (
    kiosk_id text NOT NULL,
    version integer NOT NULL,
    sku text NOT NULL CHECK (length(sku) BETWEEN 1 AND 32),
    unit_price_cents bigint NOT NULL CHECK (unit_price_cents >= 0),
    is_deposit boolean NOT NULL,
    is_return boolean NOT NULL,
    vat_rate_bp integer CHECK (vat_rate_bp BETWEEN 0 AND 10000),
    category text CHECK (length(category) BETWEEN 1 AND 32),
    PRIMARY KEY (kiosk_id, version, sku),
    FOREIGN KEY (kiosk_id, version) REFERENCES kiosk_configs (kiosk_id, version)
);

-- The lines of one config's menu (none: the config has no menu), as kiosk_config_items rows.
CREATE FUNCTION ledger_config_items(p_kiosk_id text, p_version integer, p_document jsonb)
RETURNS SETOF kiosk_config_items
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_kiosk_id, p_version, i.sku, i.unit_price_cents, coalesce(i.is_deposit, false),
           coalesce(i.is_return, false), i.vat_rate_bp, i.category
      FROM jsonb_to_recordset(CASE WHEN jsonb_typeof(p_document -> 'menu') = 'object'
                                   THEN p_document -> 'menu' -> 'items' ELSE '[]' END)
           AS i(sku text, unit_price_cents bigint, is_deposit boolean, is_return boolean,
                vat_rate_bp integer, category text)
$$;

CREATE FUNCTION trg_kiosk_config_items() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO kiosk_config_items
    SELECT * FROM ledger_config_items(NEW.kiosk_id, NEW.version, NEW.document);
    RETURN NULL;
END
$$;
CREATE TRIGGER kiosk_configs_items
    AFTER INSERT ON kiosk_configs
    FOR EACH ROW EXECUTE FUNCTION trg_kiosk_config_items();

INSERT INTO kiosk_config_items
SELECT i.* FROM kiosk_configs c
 CROSS JOIN LATERAL ledger_config_items(c.kiosk_id, c.version, c.document) AS i;

-- ---------------------------------------------------------------------------------------------
-- 4. The price check

-- For every request of a batch, in input order: why it is PRICE_MISMATCH, or NULL (it matches,
-- or it is not checked: a top-up, or a POS request, whose lines carry no SKU). PROTOCOL.md
-- "Menus": a kiosk with a menu assigned must cite a config_version; a cited version must have
-- been issued to this kiosk and be current at the order's created_at_ms (the kiosk's clock,
-- which the consumer bounded: STALE_REQUEST), or superseded (the next version's issued_at_ms)
-- at most p_menu_grace_s before it; then its menu, if it has one, prices every line: each must
-- carry a sku of that menu with exactly its unit_price_cents, is_deposit and is_return (the name
-- may differ), and the first line that does not (numbered from 1) is named.
-- One statement for the whole batch: per order a few primary-key lookups (scalar subqueries,
-- so the planner probes the keys and never hashes a whole table), per cited config one range
-- read of its menu lines, per line one lookup among those, in memory.
CREATE FUNCTION ledger_price_problems(p_requests jsonb, p_menu_grace_s integer)
RETURNS text[]
LANGUAGE plpgsql STABLE
-- One plan per session, as ledger_process_requests (which calls it with the same setting): a
-- custom plan per batch cost three times the check itself.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN (
        WITH orders AS (
            SELECT o.ordinality AS position, o.kiosk_id, o.config_version, o.items,
                   o.type = 'bar_order' AND o.source = 'mqtt'
                   AND jsonb_typeof(o.items) = 'array' AS checked,
                   o.created_at_ms
              FROM jsonb_populate_recordset(NULL::ledger_request, p_requests)
                   WITH ORDINALITY AS o
        ), verdicts AS MATERIALIZED (
            SELECT d.position, d.kiosk_id, d.config_version, d.items, v.problem,
                   -- the lines are checked: the cited config is valid and has a menu
                   d.checked AND v.problem IS NULL AND d.config_version IS NOT NULL
                   AND (SELECT true FROM kiosk_config_items h
                         WHERE h.kiosk_id = d.kiosk_id AND h.version = d.config_version
                         LIMIT 1) AS lines_checked
              FROM orders d
             CROSS JOIN LATERAL (SELECT CASE
                   WHEN NOT coalesce(d.checked, false) THEN NULL
                   WHEN d.config_version IS NULL THEN
                       CASE WHEN (SELECT k.menu IS NOT NULL FROM kiosks k
                                   WHERE k.kiosk_id = d.kiosk_id)
                            THEN 'Price mismatch: this kiosk sells from a menu the cloud sent it, '
                                 || 'and the order cites no config_version' END
                   WHEN (SELECT true FROM kiosk_configs c
                          WHERE c.kiosk_id = d.kiosk_id AND c.version = d.config_version)
                        IS NULL THEN format('Price mismatch: config version %s was never sent to this '
                                   || 'kiosk', d.config_version)
                   -- (reached only for a version that exists, so + 1 cannot overflow)
                   WHEN d.created_at_ms - (SELECT n.issued_at_ms FROM kiosk_configs n
                                            WHERE n.kiosk_id = d.kiosk_id
                                              AND n.version = d.config_version + 1)
                        > p_menu_grace_s * 1000::bigint
                       THEN format('Price mismatch: config version %s was replaced more than '
                                   || '%s s before the order was made', d.config_version,
                                   p_menu_grace_s)
                   END AS problem
                   -- (OFFSET 0: evaluated once per order, not once per use of `problem`)
                   OFFSET 0) v
        ), cited_items AS MATERIALIZED (
            -- the menu lines of each config the batch cites, read once per config (by its
            -- primary-key prefix) and then looked up in memory for every line
            SELECT i.kiosk_id, i.version, i.sku, i.unit_price_cents, i.is_deposit, i.is_return
              FROM (SELECT DISTINCT kiosk_id, config_version FROM verdicts
                     WHERE lines_checked) c
             CROSS JOIN LATERAL (
                   SELECT * FROM kiosk_config_items i
                    WHERE i.kiosk_id = c.kiosk_id AND i.version = c.config_version
                   -- (OFFSET 0: kept a lateral read by the key, never a hash of the table)
                   OFFSET 0) i
        ), bad_lines AS (
            SELECT DISTINCT ON (v.position) v.position, CASE
                   WHEN l.sku IS NULL THEN
                       format('Price mismatch: line %s has no sku, and config version %s has a '
                              || 'menu', l.line_no, v.config_version)
                   WHEN m.sku IS NULL THEN
                       format('Price mismatch: line %s: sku ''%s'' is not on the menu of config '
                              || 'version %s', l.line_no, l.sku, v.config_version)
                   WHEN m.unit_price_cents <> l.unit_price_cents THEN
                       format('Price mismatch: line %s: sku ''%s'' costs %s on the menu of '
                              || 'config version %s, not %s', l.line_no, l.sku,
                              ledger_amount_text(m.unit_price_cents), v.config_version,
                              ledger_amount_text(l.unit_price_cents))
                   ELSE
                       format('Price mismatch: line %s: sku ''%s'' is_deposit/is_return differ '
                              || 'from the menu of config version %s', l.line_no, l.sku,
                              v.config_version)
                   END AS problem
              FROM verdicts v
             CROSS JOIN LATERAL ROWS FROM (jsonb_to_recordset(v.items) AS (
                   sku text, unit_price_cents bigint, is_deposit boolean, is_return boolean))
                   WITH ORDINALITY AS l(sku, unit_price_cents, is_deposit, is_return, line_no)
              LEFT JOIN cited_items m
                     ON m.kiosk_id = v.kiosk_id AND m.version = v.config_version
                    AND m.sku = l.sku
             WHERE v.lines_checked
               AND (m.sku IS NULL OR m.unit_price_cents <> l.unit_price_cents
                    OR m.is_deposit <> coalesce(l.is_deposit, false)
                    OR m.is_return <> coalesce(l.is_return, false))
             ORDER BY v.position, l.line_no
        )
        SELECT array_agg(coalesce(v.problem, b.problem) ORDER BY v.position)
          FROM verdicts v LEFT JOIN bad_lines b ON b.position = v.position);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 5. Decide, write, and the batch: revision 0009's, with the price check (marked 0011)

DROP FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint);
DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint);
DROP FUNCTION ledger_decide_request(ledger_request, text, bigint, bigint, bigint, bigint, bigint);

CREATE FUNCTION ledger_decide_request(
    r ledger_request, p_card_status text, p_balance_cents bigint,
    p_deposit_balance_cents bigint, p_balance_cents_max bigint, p_topup_cents_max bigint,
    p_return_cents_max bigint, p_price_problem text)
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

CREATE FUNCTION ledger_process_requests(
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
                                          p_topup_cents_max, p_return_cents_max, NULL);
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
                                   p_return_cents_max, v_price_problems[v_position]);
        IF v_decision.opens_card THEN
            v_card := ledger_open_card(r.card_uid);
            c_uid := c_uid || v_card.card_uid::text;
            c_balance := c_balance || v_card.balance_cents;
            c_status := c_status || v_card.status;
            c_changed := c_changed || false;
            v_card_index := cardinality(c_uid);
            v_decision := ledger_decide_request(r, v_card.status, v_card.balance_cents,
                                                v_deposit_balance,
                                       p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
                                       v_price_problems[v_position]);
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
        -- 0011: PRICE_MISMATCH is a rejection: no balances in its outcome (PROTOCOL.md results)
        v_status := CASE WHEN v_decision.error_code IS NULL THEN 'approved'
                         WHEN v_decision.error_code = 'PRICE_MISMATCH' THEN 'rejected'
                         ELSE 'declined' END;
        IF v_status = 'rejected' THEN
            v_previous := NULL;
            v_new := NULL;
        END IF;
        v_outcome := ledger_outcome(
            r.request_id, v_status, v_decision.error_code, v_decision.message, v_started,
            r.card_uid, v_tx, v_previous, v_new, v_order);
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
            CASE WHEN v_decision.error_code IS NULL THEN v_decision.deposit_delta_cents END
        )::ledger_decided;
        v_sha := decode(r.payload_sha256, 'hex');
        e_id := e_id || r.request_id;
        e_sha := e_sha || v_sha;
        e_outcome := e_outcome || v_outcome;
    END LOOP;

    -- 6. Write it all (and track the seqs, last).
    v_outcomes := ledger_write_requests(
        p_requests, v_decided, c_uid, c_balance, c_changed, v_deposit_account_id,
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

-- The limit parameters' defaults: ledger_limit (the callers pass theirs; the defaults are for a
-- call by hand, as the docs show one).
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

-- The seed's procedures, with their signatures: the grace period is the default one.
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
        p_balance_cents_max, 1, p_return_cents_max, ledger_limit('menu_grace_s')) -> 0
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
        p_balance_cents_max, p_topup_cents_max, 0, ledger_limit('menu_grace_s')) -> 0
$$;

-- ---------------------------------------------------------------------------------------------
-- 6. Privileges: as revision 0009 gave them; the new helpers are the owner's.

REVOKE EXECUTE ON FUNCTION
    ledger_config_items(text, integer, jsonb),
    trg_kiosk_config_items(),
    ledger_price_problems(jsonb, integer),
    ledger_decide_request(ledger_request, text, bigint, bigint, bigint, bigint, bigint, text),
    ledger_process_requests(jsonb, bigint, bigint, bigint, integer),
    sp_process_batch(jsonb, bigint, bigint, bigint, integer),
    sp_handle_request(jsonb, bigint, bigint, bigint, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer)
    TO festival_service;
GRANT EXECUTE ON FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer)
    TO festival_service, festival_api;
GRANT SELECT ON kiosk_config_items TO festival_service, festival_api;
