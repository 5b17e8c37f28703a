-- Revision 0021: offline sales whose SUN fails go to the festival's loss account (issue 15
-- section 4; PROTOCOL.md 1.1 "Offline sales", "Genuine wristbands").
--
-- In sun mode an offline sale whose card_sun is missing or does not verify (any reason the
-- consumer gives, or a counter accepted before: stale_counter) is APPROVED — the drink was
-- handed over — and charged to the festival's loss account, never to the card: the card's
-- balances and debt are unchanged, an unknown card is not created (its outcome carries 0, 0 and
-- debt 0). Until 0021 such a sale was declined CARD_NOT_GENUINE. An offline sale refused before
-- the SUN check (PRICE_MISMATCH, OFFLINE_LIMIT_EXCEEDED) or by its decide step, and every online
-- request, keep 0014's CARD_NOT_GENUINE.
--
-- Postings of a loss sale of total T with deposit part D: sales:<kiosk> +(T - D), deposit:cups
-- +D (as any sale), loss:offline -T (kind loss, created on first use, the same sign as
-- loss:disputes); the card's account 0 (written, as for any plain order, when the card exists).
-- In general the loss of an approved bar order is total + card delta - debt delta: zero for
-- every sale the card or its debt paid, so every transaction still sums to zero.
--
-- offline_sales gains loss_cents (shortfall_cents + loss_cents <= total_cents) and the kiosk's
-- 24-hour bound counts debts and losses. A card's receivable account is now created when its
-- debt first moves, no longer for every offline sale's card up front (a loss sale on an unknown
-- card would have left a receivable account of no card).
--
-- Redefined with the same signatures: ledger_process_plain_requests (0014's text, renamed by
-- 0016) and ledger_write_requests (0016's text); the changes are marked 0021. The downgrade
-- restores both texts exactly and drops the column; it refuses (object_in_use) once a sale was
-- charged to the loss account (0020 cannot express it, and the ledger is append-only).

-- ---------------------------------------------------------------------------------------------
-- 1. offline_sales: what the loss account paid

ALTER TABLE offline_sales
    ADD COLUMN loss_cents bigint NOT NULL DEFAULT 0 CHECK (loss_cents >= 0),
    ADD CONSTRAINT offline_sales_shortfall_and_loss_within_total
        CHECK (shortfall_cents + loss_cents <= total_cents);

-- ---------------------------------------------------------------------------------------------
-- 2. Decide: revision 0014's ledger_process_requests (renamed ledger_process_plain_requests by
-- 0016), with the loss sale (marked 0021)

CREATE OR REPLACE FUNCTION ledger_process_plain_requests(
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
    -- 0021: what an offline sale whose SUN failed charges the loss account
    v_loss bigint;
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
           -- (0021: a card's receivable account is made when its debt first moves)
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
                    -- 0021: debts and losses
                    o_created := o_created || (
                        SELECT coalesce(sum(s.shortfall_cents + s.loss_cents), 0)::bigint
                          FROM offline_sales s
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
                -- 0021: an offline sale whose SUN fails (any reason, a stale counter too) is
                -- approved and charged to the festival's loss account, never to the card
                -- (PROTOCOL.md "Offline sales"); it opens no card. Anything else (and an
                -- offline sale its decide step refused) is CARD_NOT_GENUINE as before.
                v_decision.sun_failed_offline := coalesce(r.offline, false)
                    AND r.type = 'bar_order' AND v_decision.error_code IS NULL;
                IF v_decision.sun_failed_offline THEN
                    v_decision.message := 'Paid (offline sale) by the festival''s loss account: '
                                          || ledger_sun_message(v_sun_problem);
                    v_decision.delta_cents := 0;
                    v_decision.opens_card := false;
                ELSE
                    v_decision.error_code := 'CARD_NOT_GENUINE';
                    v_decision.message := ledger_sun_message(v_sun_problem);
                    v_decision.delta_cents := 0;
                    v_decision.deposit_delta_cents := NULL;
                    v_decision.with_order := false;
                    v_decision.opens_card := false;
                END IF;
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
        v_loss := 0;
        IF v_decision.error_code IS NULL AND coalesce(v_decision.sun_failed_offline, false) THEN
            -- 0021: the loss account pays the whole total; the card (if any) is untouched, an
            -- unknown card stays unknown (its outcome carries 0, 0 and debt 0)
            v_tx := ledger_uuid7();
            IF v_decision.with_order THEN
                v_order := ledger_uuid7();
            END IF;
            v_previous := coalesce(v_previous, 0);
            v_new := v_previous;
            v_loss := r.total_cents;
            PERFORM ledger_system_account('loss:offline');
            o_created[array_position(o_kiosk, r.kiosk_id)] :=
                o_created[array_position(o_kiosk, r.kiosk_id)] + v_loss;
            IF v_decision.deposit_delta_cents IS NOT NULL THEN
                v_deposit_balance := v_deposit_balance + v_decision.deposit_delta_cents;
                v_deposit_changed := true;
            END IF;
        ELSIF v_decision.error_code IS NULL THEN
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
            -- 0021: the receivable account of a card whose debt moves (made on first use here,
            -- no longer for every offline sale's card up front)
            IF v_debt_delta <> 0 THEN
                PERFORM ledger_system_account('receivable:' || r.card_uid);
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
            -- (0021: a loss sale on an unknown card: 0)
            || jsonb_build_object('debt_cents', CASE WHEN v_new IS NOT NULL
                                                     THEN coalesce(c_debt[v_card_index], 0) END);
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
-- 3. Write: revision 0016's, with the loss account's posting and offline_sales.loss_cents
-- (marked 0021)

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
                   AS counter_account,
               -- 0021: what the festival's loss account pays of a bar order: total + card delta
               -- - debt delta (0 for every sale the card or its debt paid; the total for an
               -- offline sale whose SUN failed)
               CASE WHEN f.type = 'bar_order'
                    THEN f.total_cents + (f.outcome ->> 'new_balance_cents')::bigint
                         - (f.outcome ->> 'previous_balance_cents')::bigint
                         - coalesce(f.debt_delta_cents, 0)
                    ELSE 0 END AS loss_cents
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
        -- 0016: a card swap's old card is blocked, replaced by the new one
        UPDATE cards k SET balance_cents = u.balance_cents, debt_cents = u.debt_cents,
                           status = CASE WHEN w.card_uid IS NULL THEN k.status
                                         ELSE 'blocked' END,
                           blocked_reason = CASE WHEN w.card_uid IS NULL THEN k.blocked_reason
                                                 ELSE 'replaced by ' || w.card_uid END,
                           replaced_by = coalesce(w.card_uid, k.replaced_by),
                           updated_at = p_at
          FROM unnest(p_card_uids, p_card_balances, p_card_debts, p_cards_changed)
               AS u(card_uid, balance_cents, debt_cents, changed)
          LEFT JOIN approved w ON w.type = 'card_swap' AND w.old_card_uid = u.card_uid
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
          -- 0021: a loss sale on an unknown card has no card (no card posting)
          LEFT JOIN cards c ON c.card_uid = a.card_uid
          JOIN accounts s ON s.name = a.counter_account
          LEFT JOIN accounts d ON a.debt_delta_cents <> 0
                              AND d.name = 'receivable:' || a.card_uid
          LEFT JOIN accounts l ON a.loss_cents <> 0 AND l.name = 'loss:offline'
         -- 0005: the card pays (or gets) the total; the sales account gets the sales lines; the
         -- deposit account the deposits minus the returns. A plain order posts exactly as in
         -- 0002 (card and sales, always); an order with deposit lines skips a zero posting.
         CROSS JOIN LATERAL (VALUES
              (c.account_id, a.delta_cents, a.new_balance_cents, true),
              (s.account_id,
               -a.delta_cents + coalesce(a.debt_delta_cents, 0) + a.loss_cents
               - coalesce(a.deposit_delta_cents, 0), NULL::bigint,
               a.deposit_delta_cents IS NULL),
              (p_deposit_account_id, a.deposit_delta_cents, NULL::bigint, false),
              (d.account_id, -a.debt_delta_cents, NULL::bigint, false),
              -- 0021: the loss account (kind loss, the same sign as loss:disputes)
              (l.account_id, -a.loss_cents, NULL::bigint, false))
              AS p(account_id, amount_cents, balance_after_cents, always)
         WHERE (p.always OR p.amount_cents <> 0) AND p.account_id IS NOT NULL
           AND a.type IN ('bar_order', 'checkpoint_recharge')
        UNION ALL
        -- 0016: a void's or a card swap's postings, as its decide step made them
        SELECT a.transaction_id, (p ->> 'account_id')::bigint, (p ->> 'amount_cents')::bigint,
               (p ->> 'balance_after_cents')::bigint
          FROM approved a
         CROSS JOIN LATERAL jsonb_array_elements(a.decided -> 'postings') AS p
         WHERE a.type IN ('void', 'card_swap')
        RETURNING 1
    ), voided AS (
        -- 0016: an order is voided once (the primary key)
        INSERT INTO voids (
            original_request_id, request_id, order_id, transaction_id, kiosk_id, card_uid,
            credited_card_uid, amount_cents, debt_paid_cents, deposit_cents, staff_id, created_at)
        SELECT a.original_request_id, a.request_id, (a.decided -> 'void' ->> 'order_id')::uuid,
               a.transaction_id, a.kiosk_id, a.card_uid,
               a.decided -> 'void' ->> 'credited_card_uid',
               (a.decided -> 'void' ->> 'amount_cents')::bigint,
               (a.decided -> 'void' ->> 'debt_paid_cents')::bigint,
               (a.decided -> 'void' ->> 'deposit_cents')::bigint, a.staff_id, p_at
          FROM approved a WHERE a.type = 'void'
        RETURNING 1
    ), swapped AS (
        -- 0016: a card is replaced once (old_card_uid is unique)
        INSERT INTO card_swaps (
            request_id, old_card_uid, new_card_uid, transaction_id, kiosk_id, staff_id,
            presence, balance_cents, debt_cents, created_at)
        SELECT a.request_id, a.old_card_uid, a.card_uid, a.transaction_id, a.kiosk_id,
               a.staff_id, a.decided -> 'swap' ->> 'presence',
               (a.decided -> 'swap' ->> 'balance_cents')::bigint,
               (a.decided -> 'swap' ->> 'debt_cents')::bigint, p_at
          FROM approved a WHERE a.type = 'card_swap'
        RETURNING 1
    ), moved_topups AS (
        -- 0016: the old card's credited Stripe top-ups follow the new card, so their refunds,
        -- disputes and a payout's Stripe parts reach the card that holds the money (a top-up
        -- still pending stays: if it is paid, the blocked old card declines it and it is refunded)
        UPDATE topups u SET card_uid = a.card_uid, updated_at = p_at
          FROM approved a
         WHERE a.type = 'card_swap' AND u.card_uid = a.old_card_uid AND u.status = 'credited'
        RETURNING 1
    ), offline AS (
        -- 0013: every approved offline sale, with what the card could not pay (the 24-hour
        -- bound, monitoring)
        INSERT INTO offline_sales (
            request_id, kiosk_id, card_uid, config_version, total_cents, shortfall_cents,
            applied_at, loss_cents)
        SELECT a.request_id, a.kiosk_id, a.card_uid, a.config_version::integer, a.total_cents,
               greatest(coalesce(a.debt_delta_cents, 0), 0), p_at,
               -- 0021: what the loss account paid
               a.loss_cents
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
            total_cents, source, created_at, created_at_ms)
        SELECT (a.outcome ->> 'order_id')::uuid, a.transaction_id, a.request_id, a.card_uid,
               a.kiosk_id, a.staff_id, a.total_cents, a.source, p_at,
               -- 0016: the kiosk's clock at the tap (the void window starts there)
               a.created_at_ms
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
      CROSS JOIN (SELECT count(*) FROM offline) offline_written
      CROSS JOIN (SELECT count(*) FROM voided) voids_written
      CROSS JOIN (SELECT count(*) FROM swapped) swaps_written;

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

-- ---------------------------------------------------------------------------------------------
-- 4. A void: revision 0016's ledger_decide_void, and an order charged to the loss account
-- cannot be voided (the card never paid it; voiding it would pay the card from the sales)

CREATE OR REPLACE FUNCTION ledger_decide_void(
    r ledger_request, p_original processed_requests, p_order bar_orders,
    p_deposit_cents bigint, p_voided boolean, p_deposit_balance_cents bigint,
    p_at timestamptz, p_void_window_s integer)
RETURNS ledger_counter_decision
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_decision ledger_counter_decision;
BEGIN
    v_decision.net_delta_cents := 0;
    v_decision.error_code := 'VOID_NOT_ALLOWED';
    -- one answer for unknown and another kiosk's: a kiosk learns nothing of other kiosks' orders
    IF p_original.request_id IS NULL OR p_original.kind IS DISTINCT FROM 'bar_order'
       OR p_original.status <> 'approved' OR p_original.kiosk_id IS DISTINCT FROM r.kiosk_id
       OR p_order.order_id IS NULL THEN
        v_decision.message := 'Not voided: no approved order of this kiosk has that request id';
    ELSIF p_order.card_id <> r.card_uid THEN
        v_decision.message := 'Not voided: the order was paid with another wristband';
    ELSIF p_voided THEN
        v_decision.message := 'Not voided: the order was voided already';
    -- 0021: the card never paid an order charged to the loss account: nothing to give back
    ELSIF EXISTS (SELECT 1 FROM offline_sales s
                   WHERE s.request_id = p_original.request_id AND s.loss_cents > 0) THEN
        v_decision.message := 'Not voided: the order was charged to the festival''s loss account';
    ELSIF ledger_ms(p_at) - coalesce(p_order.created_at_ms, ledger_ms(p_order.created_at))
          > p_void_window_s::bigint * 1000 THEN
        v_decision.message := format('Not voided: the order is older than %s minutes',
                                     round(p_void_window_s / 60.0, 1));
    ELSIF p_order.total_cents < 0 THEN
        v_decision.message := 'Not voided: an order of returns only cannot be voided';
    ELSIF coalesce(p_deposit_cents, 0) > 0
          AND p_deposit_balance_cents - p_deposit_cents < 0 THEN
        v_decision.message := 'Not voided: its cup deposits were returned already';
    ELSE
        v_decision.error_code := NULL;
        v_decision.message := 'Voided';
        v_decision.net_delta_cents := p_order.total_cents;
    END IF;
    RETURN v_decision;
END
$$;
