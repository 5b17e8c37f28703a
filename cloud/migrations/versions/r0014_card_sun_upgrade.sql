-- Revision 0013: genuine wristbands, the cloud's check (PROTOCOL.md 1.1 "Genuine wristbands —
-- NTAG 424 DNA SUN", CARD_NOT_GENUINE; issue 15 section 4).
--
-- In sun mode (FESTIVAL_CARD_AUTH=sun) the consumer verifies each request's card_sun (decrypt,
-- UID, MAC: pure CPU, protocol/sun.py) and sends the ledger either the verified SDMReadCtr
-- (sun_counter) or why it failed (sun_failure). The counter rule needs memory, so it is decided
-- here, in the transaction that applies the request, under a row lock per wristband:
-- - online: the counter is above every counter accepted for that card;
-- - offline sale: the counter was not accepted before for that card.
-- A fresh counter is accepted whatever the request's outcome. Failing: CARD_NOT_GENUINE,
-- declined, after PRICE_MISMATCH and before CARD_NOT_FOUND. In uid mode both are NULL and
-- nothing here runs.
--
-- What is kept per wristband (card_sun_counters, bounded): the highest accepted counter and
-- the accepted counters within ledger_limit('sun_counter_window') = 1024 below it (at most 1024
-- integers). An offline sale whose counter is that far below the highest is refused as stale:
-- the band was read 1024 times after it, far beyond a festival's pending offline sales.
--
-- Lock order: cards, the deposit account, then card_sun_counters (card_uid order), then the
-- kiosks (seq tracking), then sun_failure_minutes (reason order).

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

-- ---------------------------------------------------------------------------------------------
-- 2. What the procedures read of a request: the consumer's SUN verdict and the offline flag
-- (the protocol's bar_order.offline: revision 1.1's offline sales), and the decision's flag.

ALTER TYPE ledger_request
    ADD ATTRIBUTE sun_counter integer,
    ADD ATTRIBUTE sun_failure text;  -- (the offline flag: revision 0013)

ALTER TYPE ledger_decision
    -- an offline sale whose SUN failed: approved and charged to the loss account (PROTOCOL.md)
    ADD ATTRIBUTE sun_failed_offline boolean;

-- ---------------------------------------------------------------------------------------------
-- 3. The counters and the failures

CREATE TABLE card_sun_counters (
    -- no foreign key: a genuine band tapped at a bar before its first top-up has no card yet,
    -- and its counter is accepted all the same
    card_uid text PRIMARY KEY CHECK (card_uid ~ '^[0-9A-F]{14}$'),
    -- the highest accepted SDMReadCtr (3 bytes); -1: none accepted yet
    counter_max integer NOT NULL CHECK (counter_max BETWEEN -1 AND 16777215),
    -- the accepted counters above counter_max - sun_counter_window, ascending
    counters integer[] NOT NULL CHECK (cardinality(counters) <= 1024),
    -- verified messages refused for a counter already accepted: a clone's, or a sniffer's
    stale_count bigint NOT NULL DEFAULT 0 CHECK (stale_count >= 0),
    last_stale_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sun_failure_minutes (
    minute timestamptz NOT NULL,
    reason text NOT NULL CHECK (reason IN (
        'missing', 'malformed', 'not_ours', 'wrong_uid', 'bad_mac', 'stale_counter')),
    failures bigint NOT NULL CHECK (failures > 0),
    PRIMARY KEY (minute, reason)
);

CREATE FUNCTION ledger_sun_message(p_reason text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'Wristband not genuine: see the info desk (' || CASE p_reason
        WHEN 'missing' THEN 'no SUN message'
        WHEN 'malformed' THEN 'malformed SUN message'
        WHEN 'not_ours' THEN 'not a wristband of this festival'
        WHEN 'wrong_uid' THEN 'SUN message of another wristband'
        WHEN 'bad_mac' THEN 'SUN message does not verify'
        WHEN 'stale_counter' THEN 'SUN message already used'
        ELSE 'SUN check failed' END || ')'
$$;

-- A portal login by GET /t (DESIGN.md): a verified SUN message logs a phone in when its counter
-- is fresh by the online rule, and accepts it like a kiosk's request would. True: accepted.
CREATE FUNCTION sp_accept_sun_counter(p_card_uid text, p_counter integer) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_max integer;
    v_counters integer[];
    v_window integer := ledger_limit('sun_counter_window');
BEGIN
    IF p_card_uid IS NULL OR p_card_uid !~ '^[0-9A-F]{14}$'
       OR p_counter IS NULL OR p_counter NOT BETWEEN 0 AND 16777215 THEN
        RAISE EXCEPTION 'a 7-byte card_uid and a 3-byte counter are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO card_sun_counters (card_uid, counter_max, counters)
    VALUES (p_card_uid, -1, '{}') ON CONFLICT (card_uid) DO NOTHING;
    SELECT counter_max, counters INTO v_max, v_counters
      FROM card_sun_counters WHERE card_uid = p_card_uid FOR UPDATE;
    IF p_counter <= v_max THEN
        UPDATE card_sun_counters SET stale_count = stale_count + 1, last_stale_at = now()
         WHERE card_uid = p_card_uid;
        INSERT INTO sun_failure_minutes AS m (minute, reason, failures)
        VALUES (date_trunc('minute', now()), 'stale_counter', 1)
        ON CONFLICT (minute, reason) DO UPDATE SET failures = m.failures + 1;
        RETURN false;
    END IF;
    UPDATE card_sun_counters
       SET counter_max = p_counter,
           counters = coalesce((SELECT array_agg(c ORDER BY c)
                                  FROM unnest(v_counters || p_counter) AS c
                                 WHERE c > p_counter - v_window), '{}'),
           updated_at = now()
     WHERE card_uid = p_card_uid;
    RETURN true;
END
$$;

-- GET /t with the attendee portal (revision 0012): the counter accepted and, for a card that
-- exists, a `tap` session opened, in one transaction. accepted false: a stale counter (no
-- session); expires_at NULL: accepted, but there is no card to log in to yet.
CREATE FUNCTION sp_portal_tap_login(
    p_card_uid text, p_counter integer, p_token_sha256 bytea, p_ttl_s integer)
RETURNS TABLE (accepted boolean, expires_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT sp_accept_sun_counter(p_card_uid, p_counter) THEN
        RETURN QUERY SELECT false, NULL::timestamptz;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM cards c WHERE c.card_uid = p_card_uid) THEN
        RETURN QUERY SELECT true, NULL::timestamptz;
        RETURN;
    END IF;
    RETURN QUERY SELECT true,
        ledger_portal_open_session(p_card_uid, 'tap', p_token_sha256, p_ttl_s);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 4. The batch: revision 0011's, with the SUN check (marked 0013)

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
    -- 0013: the batch's verified wristbands' SUN counters, locked: per card the highest accepted
    -- (-1: none yet) and whether it changed; every accepted counter kept (stored and this
    -- batch's, as pairs); this batch's failures by card and reason
    v_sun_uids text[];
    s_uid text[];
    s_max integer[];
    s_changed boolean[];
    t_uid text[];
    t_counter integer[];
    f_uid text[] := '{}';
    f_reason text[] := '{}';
    v_sun_index integer;
    v_sun_problem text;
    v_sun_fresh boolean;
    v_sun_window integer := ledger_limit('sun_counter_window');
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

    -- 2c. (0013) The SUN counters of the batch's verified wristbands (the consumer verified the
    -- message; freshness is decided here, under this lock, so two consumers cannot both accept
    -- one counter): a row per wristband, made when it has none, locked in card_uid order after
    -- the cards and the deposit account.
    SELECT array_agg(DISTINCT x ->> 'card_uid') INTO v_sun_uids
      FROM jsonb_array_elements(p_requests) x
     WHERE jsonb_typeof(x -> 'sun_counter') = 'number';
    IF v_sun_uids IS NOT NULL THEN
        INSERT INTO card_sun_counters (card_uid, counter_max, counters, updated_at)
        SELECT u.card_uid, -1, '{}', v_started FROM unnest(v_sun_uids) AS u(card_uid)
         ORDER BY u.card_uid
        ON CONFLICT (card_uid) DO NOTHING;
        SELECT array_agg(s.card_uid ORDER BY s.card_uid),
               array_agg(s.counter_max ORDER BY s.card_uid), array_agg(false)
          INTO s_uid, s_max, s_changed
          FROM (SELECT c.card_uid, c.counter_max FROM card_sun_counters c
                 WHERE c.card_uid = ANY (v_sun_uids)
                 ORDER BY c.card_uid
                   FOR UPDATE) s;
        SELECT array_agg(c.card_uid), array_agg(n.counter) INTO t_uid, t_counter
          FROM card_sun_counters c CROSS JOIN LATERAL unnest(c.counters) AS n(counter)
         WHERE c.card_uid = ANY (v_sun_uids);
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
        -- 0014: the SUN check (PROTOCOL.md "Genuine wristbands"), in sun mode only (the
        -- consumer sends a verified counter or the failure's reason): CARD_NOT_GENUINE after
        -- the price check, before every rule of the card. A verified counter that is fresh is
        -- accepted whatever the outcome (online: above every accepted one; offline: not
        -- accepted before, and within the window of kept counters).
        v_sun_problem := NULL;
        IF r.sun_failure IS NOT NULL THEN
            IF r.sun_failure NOT IN ('missing', 'malformed', 'not_ours', 'wrong_uid', 'bad_mac')
               OR r.sun_counter IS NOT NULL THEN
                RAISE EXCEPTION 'request %: sun_failure % is not a reason the consumer gives',
                    r.request_id, left(r.sun_failure, 32)
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            v_sun_problem := r.sun_failure;
        ELSIF r.sun_counter IS NOT NULL THEN
            v_sun_index := array_position(s_uid, r.card_uid);
            IF coalesce(r.offline, false) THEN
                v_sun_fresh := r.sun_counter > s_max[v_sun_index] - v_sun_window
                    AND NOT EXISTS (SELECT 1 FROM unnest(t_uid, t_counter) AS t(card_uid, counter)
                                     WHERE t.card_uid = r.card_uid AND t.counter = r.sun_counter);
            ELSE
                v_sun_fresh := r.sun_counter > s_max[v_sun_index];
            END IF;
            IF v_sun_fresh THEN
                s_max[v_sun_index] := greatest(s_max[v_sun_index], r.sun_counter);
                s_changed[v_sun_index] := true;
                t_uid := t_uid || r.card_uid;
                t_counter := t_counter || r.sun_counter;
            ELSE
                v_sun_problem := 'stale_counter';
            END IF;
        END IF;
        IF v_sun_problem IS NOT NULL THEN
            f_uid := f_uid || r.card_uid;
            f_reason := f_reason || v_sun_problem;
            -- after PRICE_MISMATCH and OFFLINE_LIMIT_EXCEEDED (PROTOCOL.md's order)
            IF v_price_problems[v_position] IS NULL AND v_offline_problem IS NULL THEN
                -- The decision flag for the offline rule: an offline sale whose SUN fails is
                -- approved and charged to the festival's loss account (PROTOCOL.md "Offline
                -- sales").
                v_decision.sun_failed_offline := coalesce(r.offline, false);
                -- TODO(loss account, issue 14): until the loss account exists, an offline
                -- sale with sun_failed_offline is declined like an online request
                -- (tests/ledger/test_r0014_sun.py, xfail strict).
                v_decision.error_code := 'CARD_NOT_GENUINE';
                v_decision.message := ledger_sun_message(v_sun_problem);
                v_decision.delta_cents := 0;
                v_decision.deposit_delta_cents := NULL;
                v_decision.with_order := false;
                v_decision.opens_card := false;
            END IF;
        END IF;
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

    -- 8. (0013) The accepted counters (the highest, and those within the window below it: the
    -- bound), on the rows locked in 2c; this batch's failures, per card (stale counters: the
    -- cloning alarm) and per minute and reason (the dashboard), in reason order.
    IF s_uid IS NOT NULL THEN
        UPDATE card_sun_counters c
           SET counter_max = u.counter_max,
               counters = coalesce(
                   (SELECT array_agg(DISTINCT t.counter ORDER BY t.counter)
                      FROM unnest(t_uid, t_counter) AS t(card_uid, counter)
                     WHERE t.card_uid = u.card_uid
                       AND t.counter > u.counter_max - v_sun_window), '{}'),
               updated_at = v_started
          FROM unnest(s_uid, s_max, s_changed) AS u(card_uid, counter_max, changed)
         WHERE u.changed AND c.card_uid = u.card_uid;
    END IF;
    IF cardinality(f_reason) > 0 THEN
        UPDATE card_sun_counters c
           SET stale_count = c.stale_count + f.stale, last_stale_at = v_started
          FROM (SELECT x.card_uid, count(*) AS stale
                  FROM unnest(f_uid, f_reason) AS x(card_uid, reason)
                 WHERE x.reason = 'stale_counter' GROUP BY x.card_uid) f
         WHERE c.card_uid = f.card_uid;
        INSERT INTO sun_failure_minutes AS m (minute, reason, failures)
        SELECT date_trunc('minute', v_started), x.reason, count(*)
          FROM unnest(f_reason) AS x(reason) GROUP BY x.reason ORDER BY x.reason
        ON CONFLICT (minute, reason) DO UPDATE SET failures = m.failures + excluded.failures;
        -- bounded: a week of minutes (the dashboard shows the last hour)
        DELETE FROM sun_failure_minutes
         WHERE minute < date_trunc('minute', v_started) - make_interval(days => 7);
    END IF;
    RETURN v_outcomes;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 5. Privileges

REVOKE EXECUTE ON FUNCTION ledger_sun_message(text), sp_accept_sun_counter(text, integer),
    sp_portal_tap_login(text, integer, bytea, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_portal_tap_login(text, integer, bytea, integer) TO festival_api;
GRANT EXECUTE ON FUNCTION sp_accept_sun_counter(text, integer) TO festival_service, festival_api;
GRANT SELECT ON card_sun_counters, sun_failure_minutes TO festival_service, festival_api;
