-- Revision 0022 (cash-out): the end-of-festival cash-out at a checkpoint (issue 17 section 5;
-- DESIGN.md `card cash-out`; our `cash_out` request, docs/protocol.md).
--   * cash_out: the whole balance of a card leaves it in one transaction 'cash_out'. The part
--     refundable to the card's Stripe top-ups is split exactly as sp_payout_request splits a
--     payout's (newest top-up first, what each has left after refunds and earlier Stripe parts)
--     and becomes pending 'stripe' payout parts, refunded by the payout refund runner
--     (cloud/api/payout_refunds.py) like a payout's: posted to 'payout:pending'. Only the rest is
--     paid in cash from the checkpoint's drawer: posted to 'cash:<checkpoint>' (+: cash out of
--     the drawer, so sp_shift_close's expected cash drops by it). The card is blocked
--     'cashed out' (ledger_blocked_by_the_system: it cannot be swapped either).
--   * Refused (declined, the reason in the message): unknown card CARD_NOT_FOUND; a blocked card,
--     an unfinished payout or an open Stripe dispute CARD_BLOCKED; a debt or nothing to pay out
--     INSUFFICIENT_FUNDS; in sun mode a SUN message that fails CARD_NOT_GENUINE.
--   * A replaced card (card swap) is followed to its replacement, as a void is; the cards are
--     locked first, so two cash-outs of one card at once: one wins, the other finds it blocked.
--   * Exactly once by request id, like every request: the claim, the card's balance, the
--     transaction, the audit and the cache are ledger_write_requests' (unchanged); this
--     procedure then writes the postings, the cash_outs row, the Stripe parts and the block, in
--     the same transaction.
--   * sp_cash_out: `festival-cloud card cash-out UID --checkpoint ID --staff STAFF_ID`, the same
--     procedure on the operator's word (source 'http', as sp_card_swap).
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return', 'void', 'card_swap', 'cash_variance', 'payout_paid', 'cash_out'));

ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_kind_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_kind_check
    CHECK (kind IN ('bar_order', 'checkpoint_recharge', 'void', 'card_swap', 'cash_out'));

CREATE TABLE cash_outs (
    request_id text PRIMARY KEY,
    transaction_id uuid NOT NULL UNIQUE,
    card_uid text NOT NULL,            -- the request's card
    cashed_card_uid text NOT NULL,     -- the card paid out: that card, or its replacement
    checkpoint_id text NOT NULL
        CHECK (length(checkpoint_id) BETWEEN 1 AND 64 AND checkpoint_id !~ '[[:cntrl:]]'),
    kiosk_id text,                     -- NULL: the operator's cash-out (festival-cloud)
    staff_id text NOT NULL CHECK (length(staff_id) BETWEEN 1 AND 64),
    balance_cents bigint NOT NULL CHECK (balance_cents > 0),            -- what the card held
    cash_cents bigint NOT NULL CHECK (cash_cents >= 0),                 -- paid from the drawer
    stripe_refund_cents bigint NOT NULL CHECK (stripe_refund_cents >= 0),  -- refunded to Stripe
    -- the payouts.request_id of the Stripe parts (NULL: none)
    payout_request_id uuid,
    created_at timestamptz NOT NULL,
    CHECK (balance_cents = cash_cents + stripe_refund_cents),
    CHECK ((stripe_refund_cents = 0) = (payout_request_id IS NULL))
);
CREATE INDEX cash_outs_card_idx ON cash_outs (cashed_card_uid);
CREATE INDEX cash_outs_checkpoint_idx ON cash_outs (checkpoint_id, created_at);
CREATE TRIGGER cash_outs_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON cash_outs
    FOR EACH STATEMENT EXECUTE FUNCTION trg_forbid_change();

-- Cents as the rest of the project writes euros for people (cloud/admin.py _euros): 12.50.
CREATE FUNCTION ledger_euros(p_cents bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_cents < 0 THEN '-' ELSE '' END || (abs(p_cents) / 100)::text || '.'
           || lpad((abs(p_cents) % 100)::text, 2, '0')
$$;

-- What a cash-out tells the kiosk and the operator to do.
CREATE FUNCTION ledger_cash_out_message(p_cash_cents bigint, p_stripe_cents bigint)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_stripe_cents = 0 THEN format('Pay %s in cash', ledger_euros(p_cash_cents))
        WHEN p_cash_cents = 0
            THEN format('Nothing in cash; %s refunded to the card used online',
                        ledger_euros(p_stripe_cents))
        ELSE format('Pay %s in cash; %s refunded to the card used online',
                    ledger_euros(p_cash_cents), ledger_euros(p_stripe_cents))
    END || '. Wristband blocked'
$$;

-- (cash-out) revision 0016's, with the cash-out's edge function name.
CREATE OR REPLACE FUNCTION ledger_source_function(p_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_type
        WHEN 'bar_order' THEN 'process-bar-order'
        WHEN 'checkpoint_recharge' THEN 'process-checkpoint-recharge'
        WHEN 'void' THEN 'process-void'
        WHEN 'card_swap' THEN 'process-card-swap'
        WHEN 'cash_out' THEN 'process-cash-out'
    END
$$;

-- (cash-out) revision 0016's, a cash_out request to ledger_process_cash_out.
CREATE OR REPLACE FUNCTION ledger_process_requests(
    p_requests jsonb, p_balance_cents_max bigint, p_topup_cents_max bigint,
    p_return_cents_max bigint, p_menu_grace_s integer,
    p_void_window_s integer DEFAULT ledger_limit('void_window_s'))
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_outcomes jsonb := '[]';
    v_run jsonb := '[]';
    v_request jsonb;
BEGIN
    IF jsonb_typeof(p_requests) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'p_requests must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_void_window_s IS NULL OR p_void_window_s < 0 THEN
        RAISE EXCEPTION 'invalid limits' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A late offline sale made on a band that has been replaced since follows its replacement
    -- (PROTOCOL.md `card_swap`): it is applied to the card that holds the money now. (The result
    -- still echoes the request's card_uid: the consumer answers with the request's fields.)
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_requests) x
                 JOIN cards c ON c.card_uid = x ->> 'card_uid'
                WHERE x ->> 'type' = 'bar_order' AND x ->> 'offline' = 'true'
                  AND c.replaced_by IS NOT NULL) THEN
        SELECT jsonb_agg(CASE WHEN e.x ->> 'type' = 'bar_order' AND e.x ->> 'offline' = 'true'
                              THEN e.x || jsonb_build_object(
                                  'card_uid', ledger_replacement_of(e.x ->> 'card_uid'))
                              ELSE e.x END ORDER BY e.position)
          INTO p_requests
          FROM jsonb_array_elements(p_requests) WITH ORDINALITY AS e(x, position);
    END IF;
    -- A batch without voids, swaps and cash-outs (nearly every one) goes through unchanged.
    IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_requests) x
                    WHERE x ->> 'type' IN ('void', 'card_swap', 'cash_out')) THEN
        RETURN ledger_process_plain_requests(
            p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
            p_menu_grace_s);
    END IF;
    FOR v_request IN SELECT x.value FROM jsonb_array_elements(p_requests) WITH ORDINALITY x
                      ORDER BY x.ordinality LOOP
        IF v_request ->> 'type' IN ('void', 'card_swap', 'cash_out') THEN
            IF jsonb_array_length(v_run) > 0 THEN
                v_outcomes := v_outcomes || ledger_process_plain_requests(
                    v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
                    p_menu_grace_s);
                v_run := '[]';
            END IF;
            -- (cash-out) a checkpoint's cash-out: its own procedure
            IF v_request ->> 'type' = 'cash_out' THEN
                v_outcomes := v_outcomes || jsonb_build_array(
                    ledger_process_cash_out(v_request, false));
                CONTINUE;
            END IF;
            v_outcomes := v_outcomes || jsonb_build_array(ledger_process_counter_request(
                v_request, p_balance_cents_max, p_void_window_s, false));
        ELSE
            v_run := v_run || jsonb_build_array(v_request);
        END IF;
    END LOOP;
    IF jsonb_array_length(v_run) > 0 THEN
        v_outcomes := v_outcomes || ledger_process_plain_requests(
            v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max, p_menu_grace_s);
    END IF;
    RETURN v_outcomes;
END
$$;

-- One cash-out (a kiosk's over MQTT, p_operator false; the operator's through sp_cash_out):
-- lock, decide, write. The outcome as every request's, with cash_cents and stripe_refund_cents
-- when approved.
CREATE FUNCTION ledger_process_cash_out(p_request jsonb, p_operator boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_document jsonb := p_request - 'decided';
    r ledger_request := jsonb_populate_record(NULL::ledger_request, p_request - 'decided');
    v_claim processed_requests;
    v_checkpoint text;
    v_card cards;
    v_card_uid text;
    v_hops integer := 0;
    v_sun_problem text;
    v_code text;
    v_message text;
    v_status text;
    v_tx uuid;
    v_outcome jsonb;
    v_previous bigint;
    v_new bigint;
    v_debt bigint;
    v_rest bigint;
    v_stripe bigint := 0;
    v_part bigint;
    v_topup record;
    v_payout_request uuid;
    v_written jsonb;
BEGIN
    IF r.type IS DISTINCT FROM 'cash_out' OR r.request_id IS NULL OR r.card_uid IS NULL
       OR r.staff_id IS NULL OR r.source IS NULL OR r.source NOT IN ('mqtt', 'http')
       OR NOT coalesce(r.payload_sha256 ~ '^[0-9a-fA-F]{64}$', false)
       OR NOT ledger_card_uid_valid(r.card_uid)
       -- a kiosk's request: only what arrived over MQTT from a kiosk (or the operator's own)
       OR (NOT p_operator AND (r.kiosk_id IS NULL OR r.source <> 'mqtt'))
       OR (p_operator AND r.checkpoint_id IS NULL) THEN
        RAISE EXCEPTION 'malformed cash-out % (request_id, card_uid, staff_id, a hex payload_sha256, an MQTT kiosk or the operator''s checkpoint are required)',
            left(coalesce(r.request_id, '?'), 64)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF r.sun_failure IS NOT NULL AND r.sun_failure NOT IN (
           'missing', 'malformed', 'not_ours', 'wrong_uid', 'bad_mac')
       OR (r.sun_failure IS NOT NULL AND r.sun_counter IS NOT NULL) THEN
        RAISE EXCEPTION 'request %: a SUN verdict that is not the consumer''s', r.request_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Whose drawer pays: the operator's checkpoint, or the one the kiosk is registered for.
    IF p_operator THEN
        v_checkpoint := r.checkpoint_id;
    ELSE
        SELECT coalesce(k.checkpoint_id, k.kiosk_id) INTO v_checkpoint
          FROM kiosks k WHERE k.kiosk_id = r.kiosk_id;
        IF v_checkpoint IS NULL THEN
            RAISE EXCEPTION 'cash-out % from unregistered kiosk %', r.request_id, r.kiosk_id
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    -- 1. The card, or the card that replaced it (followed, then locked), as a void's.
    v_card_uid := r.card_uid;
    LOOP
        SELECT * INTO v_card FROM cards WHERE card_uid = v_card_uid FOR UPDATE;
        EXIT WHEN NOT FOUND OR v_card.replaced_by IS NULL;
        v_hops := v_hops + 1;
        IF v_hops > ledger_limit('replacements_followed_max') THEN
            RAISE EXCEPTION 'card % was replaced more than % times', r.card_uid,
                ledger_limit('replacements_followed_max')
                USING ERRCODE = 'program_limit_exceeded';
        END IF;
        v_card_uid := v_card.replaced_by;
    END LOOP;

    -- 2. Seen before (read under the card lock): the stored outcome again, or a conflict.
    SELECT * INTO v_claim FROM processed_requests WHERE request_id = r.request_id;
    IF FOUND THEN
        IF v_claim.payload_sha256 = decode(r.payload_sha256, 'hex') THEN
            RETURN ledger_write_requests(
                jsonb_build_array(v_document),
                ARRAY[ROW('replayed', v_claim.outcome || '{"replayed": true}', NULL, NULL)::ledger_decided],
                '{}', '{}', '{}', '{}', NULL, NULL, v_started) -> 0;
        END IF;
        RETURN ledger_write_requests(
            jsonb_build_array(v_document),
            ARRAY[ROW('conflict', ledger_outcome(
                r.request_id, 'rejected', 'IDEMPOTENCY_CONFLICT',
                'Request id already used for a different request', v_started, r.card_uid),
                NULL, NULL)::ledger_decided],
            '{}', '{}', '{}', '{}', NULL, NULL, v_started) -> 0;
    END IF;

    -- 3. Decide, in this order. The SUN counter is accepted whatever the outcome (the lock
    -- order: cards, then SUN counters).
    v_sun_problem := r.sun_failure;
    IF r.sun_counter IS NOT NULL AND NOT sp_accept_sun_counter(r.card_uid, r.sun_counter) THEN
        v_sun_problem := 'stale_counter';
    END IF;
    IF v_sun_problem IS NOT NULL THEN
        v_code := 'CARD_NOT_GENUINE';
        v_message := ledger_sun_message(v_sun_problem);
    ELSIF v_card.card_uid IS NULL THEN
        v_code := 'CARD_NOT_FOUND';
        v_message := 'Unknown wristband: nothing to pay out';
    ELSIF v_card.status = 'blocked'
          AND position('cashed out' IN coalesce(v_card.blocked_reason, '')) > 0 THEN
        v_code := 'CARD_BLOCKED';
        v_message := 'Not paid out: the wristband was cashed out already';
    ELSIF EXISTS (SELECT 1 FROM payouts o WHERE o.card_uid = v_card.card_uid
                     AND o.state IN ('pending', 'exported')) THEN
        v_code := 'CARD_BLOCKED';
        v_message := 'Not paid out: a payout of this wristband is not finished';
    ELSIF EXISTS (SELECT 1 FROM stripe_disputes d JOIN topups t USING (topup_id)
                   WHERE t.card_uid = v_card.card_uid AND d.status NOT IN ('won', 'lost'))
          OR (v_card.status = 'blocked' AND v_card.blocked_reason IN (
                  'payment disputed', 'payment disputed (unmatched payment: reconcile)')) THEN
        -- r0018's rule: charge.dispute.created only blocks the card until the dispute closes
        v_code := 'CARD_BLOCKED';
        v_message := 'Not paid out: a Stripe payment of this wristband is disputed';
    ELSIF v_card.status <> 'active' THEN
        v_code := 'CARD_BLOCKED';
        v_message := left('Not paid out: wristband blocked ('
                          || coalesce(v_card.blocked_reason, 'blocked') || ')', 200);
    ELSIF v_card.debt_cents > 0 THEN
        v_code := 'INSUFFICIENT_FUNDS';
        v_message := format('Not paid out: the wristband owes %s', ledger_euros(v_card.debt_cents));
    ELSIF v_card.balance_cents <= 0 THEN
        v_code := 'INSUFFICIENT_FUNDS';
        v_message := 'Not paid out: the balance is 0.00';
    END IF;

    -- 4. The outcome.
    v_previous := v_card.balance_cents;
    v_new := v_card.balance_cents;
    v_debt := v_card.debt_cents;
    IF v_code IS NULL THEN
        v_tx := ledger_uuid7();
        -- The Stripe part: sp_payout_request's split (revisions 0015/0018), newest top-up first.
        v_rest := v_card.balance_cents;
        FOR v_topup IN
            SELECT t.topup_id, t.payment_intent_id,
                   t.credited_cents - t.refunded_cents
                   - coalesce((SELECT sum(p.amount_cents) FROM payouts p
                                WHERE p.topup_id = t.topup_id AND p.kind = 'stripe'
                                  AND p.state IN ('pending', 'paid')), 0) AS rest
              FROM topups t
             WHERE t.card_uid = v_card.card_uid AND t.status = 'credited'
               AND t.payment_intent_id IS NOT NULL
             ORDER BY t.created_at DESC, t.topup_id DESC
        LOOP
            EXIT WHEN v_rest <= 0;
            v_part := least(v_rest, greatest(v_topup.rest, 0));
            CONTINUE WHEN v_part <= 0;
            IF v_payout_request IS NULL THEN
                v_payout_request := ledger_uuid7();
            END IF;
            PERFORM ledger_payout_add(v_payout_request, v_card, 'stripe', v_part, 'pending',
                                      v_topup.payment_intent_id, v_topup.topup_id, NULL, NULL,
                                      'cash-out:' || r.request_id, v_started);
            v_stripe := v_stripe + v_part;
            v_rest := v_rest - v_part;
        END LOOP;
        v_new := 0;
        v_debt := 0;
        v_message := ledger_cash_out_message(v_rest, v_stripe);
    ELSIF v_card.card_uid IS NULL THEN
        -- no balances for a card that does not exist (PROTOCOL.md results)
        v_previous := NULL;
        v_new := NULL;
        v_debt := NULL;
    END IF;
    v_status := CASE WHEN v_code IS NULL THEN 'approved' ELSE 'declined' END;
    v_outcome := ledger_outcome(
        r.request_id, v_status, v_code, v_message, v_started, r.card_uid, v_tx, v_previous,
        v_new) || jsonb_build_object('debt_cents', v_debt);
    IF v_code IS NOT NULL THEN
        RETURN ledger_write_requests(
            jsonb_build_array(v_document), ARRAY[ROW('new', v_outcome, NULL, 0)::ledger_decided],
            '{}', '{}', '{}', '{}', NULL, NULL, v_started) -> 0;
    END IF;
    v_outcome := v_outcome || jsonb_build_object('cash_cents', v_rest,
                                                 'stripe_refund_cents', v_stripe);

    -- 5. Write: the claim, the card's balance, the transaction, audit, cache, seq ...
    v_written := ledger_write_requests(
        jsonb_build_array(v_document), ARRAY[ROW('new', v_outcome, NULL, 0)::ledger_decided],
        ARRAY[v_card.card_uid::text], ARRAY[0::bigint], ARRAY[0::bigint], ARRAY[true],
        NULL, NULL, v_started) -> 0;
    -- ... then what only a cash-out has. Double entry: card -balance, the drawer +cash, the
    -- pending payouts +Stripe part.
    INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
    SELECT v_tx, p.account_id, p.amount_cents, p.balance_after_cents
      FROM (VALUES (v_card.account_id, -v_card.balance_cents, 0::bigint),
                   (ledger_system_account('cash:' || v_checkpoint), v_rest, NULL::bigint),
                   (ledger_system_account('payout:pending'), v_stripe, NULL::bigint))
           AS p(account_id, amount_cents, balance_after_cents)
     WHERE p.amount_cents <> 0;
    INSERT INTO cash_outs (request_id, transaction_id, card_uid, cashed_card_uid, checkpoint_id,
                           kiosk_id, staff_id, balance_cents, cash_cents, stripe_refund_cents,
                           payout_request_id, created_at)
    VALUES (r.request_id, v_tx, r.card_uid, v_card.card_uid, v_checkpoint, r.kiosk_id,
            left(r.staff_id, 64), v_card.balance_cents, v_rest, v_stripe, v_payout_request,
            v_started);
    UPDATE cards SET status = 'blocked',
                     blocked_reason = ledger_block_reason(status, blocked_reason, 'cashed out'),
                     updated_at = v_started
     WHERE card_uid = v_card.card_uid;
    RETURN v_written;
END
$$;

-- The operator's cash-out (festival-cloud card cash-out UID --checkpoint ID --staff STAFF_ID):
-- the cash_out request on the operator's word, idempotent by p_request_id like a kiosk's. The
-- checkpoint must be one: a checkpoint kiosk is registered for it or its drawer took cash
-- (sp_shift_close's rule); else NULL.
CREATE FUNCTION sp_cash_out(
    p_request_id text, p_card_uid text, p_checkpoint_id text, p_staff_id text)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF p_checkpoint_id IS NULL OR NOT (
           EXISTS (SELECT 1 FROM kiosks WHERE checkpoint_id = p_checkpoint_id
                                          AND role IN ('checkpoint', 'all'))
           OR EXISTS (SELECT 1 FROM kiosks WHERE kiosk_id = p_checkpoint_id
                                             AND checkpoint_id IS NULL
                                             AND role IN ('checkpoint', 'all'))
           OR EXISTS (SELECT 1 FROM accounts WHERE name = 'cash:' || p_checkpoint_id)) THEN
        RETURN NULL;
    END IF;
    RETURN ledger_process_cash_out(
        jsonb_build_object(
            'type', 'cash_out', 'request_id', p_request_id, 'card_uid', p_card_uid,
            'staff_id', p_staff_id, 'checkpoint_id', p_checkpoint_id, 'source', 'http',
            'payload_sha256', encode(sha256(convert_to(
                'cash_out ' || coalesce(p_card_uid, '') || ' ' || p_checkpoint_id || ' '
                || coalesce(p_staff_id, ''), 'UTF8')), 'hex')),
        true);
END
$$;

-- festival-cloud check: revision 0016's ledger_check_accounts with one rule added, marked
-- (cash-out); the downgrade restores 0016's.
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

    -- 0016: a replaced card's money moved to its replacement, and nothing credits it after
    -- (its top-ups are declined, its voids and Stripe top-ups follow the replacement)
    RETURN QUERY
    SELECT format('card %s was replaced by %s but holds a balance of %s cents',
                  c.card_uid, c.replaced_by, c.balance_cents)
      FROM cards c WHERE c.replaced_by IS NOT NULL AND c.balance_cents <> 0
     ORDER BY c.card_uid LIMIT p_limit;

    -- 0016: a void gives back exactly its order's total, once, onto the order's card or one
    -- that replaced it
    RETURN QUERY
    SELECT format('void %s of order %s gives back %s cents, not the order''s %s',
                  v.request_id, v.original_request_id, v.amount_cents, o.total_cents)
      FROM voids v JOIN bar_orders o ON o.order_id = v.order_id
     WHERE o.total_cents <> v.amount_cents OR o.client_request_id <> v.original_request_id
     ORDER BY v.original_request_id LIMIT p_limit;

    -- (cash-out) a cash-out's transaction took exactly the card's balance off it, put exactly
    -- its cash into the drawer's account and its Stripe part into payout:pending, and its
    -- Stripe payout parts add up to that part
    RETURN QUERY
    SELECT format('cash-out %s: card %s, drawer %s, payout:pending %s, Stripe parts %s cents; expected %s = %s cash + %s Stripe',
                  o.request_id, t.card, t.cash, t.pending, s.parts, o.balance_cents,
                  o.cash_cents, o.stripe_refund_cents)
      FROM cash_outs o
     CROSS JOIN LATERAL (
           SELECT coalesce(-sum(p.amount_cents) FILTER (WHERE a.kind = 'card'), 0) AS card,
                  coalesce(sum(p.amount_cents)
                           FILTER (WHERE a.name = 'cash:' || o.checkpoint_id), 0) AS cash,
                  coalesce(sum(p.amount_cents)
                           FILTER (WHERE a.name = 'payout:pending'), 0) AS pending
             FROM postings p JOIN accounts a ON a.account_id = p.account_id
            WHERE p.transaction_id = o.transaction_id) t
     CROSS JOIN LATERAL (
           SELECT coalesce(sum(x.amount_cents), 0) AS parts FROM payouts x
            WHERE x.request_id = o.payout_request_id AND x.kind = 'stripe') s
     WHERE t.card <> o.balance_cents OR t.cash <> o.cash_cents
        OR t.pending <> o.stripe_refund_cents OR s.parts <> o.stripe_refund_cents
     ORDER BY o.request_id LIMIT p_limit;
END
$$;

REVOKE EXECUTE ON FUNCTION
    ledger_euros(bigint),
    ledger_cash_out_message(bigint, bigint),
    ledger_process_cash_out(jsonb, boolean),
    sp_cash_out(text, text, text, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_cash_out(text, text, text, text) TO festival_service;
GRANT SELECT ON cash_outs TO festival_service, festival_api;
