-- Revision 0013 down: revision 0011's batch and limit (0012 left them as they were), no SUN counters.

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

DROP FUNCTION sp_portal_tap_login(text, integer, bytea, integer);
DROP FUNCTION sp_accept_sun_counter(text, integer);
DROP FUNCTION ledger_sun_message(text);
DROP TABLE sun_failure_minutes;
DROP TABLE card_sun_counters;

ALTER TYPE ledger_decision DROP ATTRIBUTE sun_failed_offline;
ALTER TYPE ledger_request
    DROP ATTRIBUTE sun_failure,
    DROP ATTRIBUTE sun_counter;
