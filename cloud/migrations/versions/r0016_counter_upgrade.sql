-- Revision 0016: at the counter - void and card swap (PROTOCOL.md 1.1 `void`, `card_swap`,
-- VOID_NOT_ALLOWED; DESIGN.md `card swap`, FESTIVAL_VOID_WINDOW_S; issue 17 sections 1-2).
--
--   * void: a bar kiosk cancels one of its own approved bar orders while the cloud's clock is at
--     most the void window after the order's created_at_ms (bar_orders.created_at_ms, kept from
--     now on; an order applied before this revision is judged by when it was applied). The whole
--     amount comes back to the order's card - or, when that card was replaced, to the card that
--     replaced it (cards.replaced_by, followed) - in one new transaction: the card's net position
--     (balance - debt) grows by the total, so whatever of the debt is still owed is paid first and
--     the rest is balance (the maximum balance does not apply); the sales account gives back the
--     order's sales lines and the deposit account its deposits (deposits minus returns). Once
--     only (voids, keyed by the original's request id).
--   * card_swap: everything a wristband holds (balance and debt, netted) moves to a new one in
--     one transaction; the old card is blocked 'replaced by <new>' and points at the new one
--     (cards.replaced_by). Both cards are locked in card_uid order. An active old card only when
--     it is presented: in sun mode its SUN message verified (the consumer's verdict, its counter
--     fresh by the online rule), in uid mode allowed and recorded (card_swaps.presence = 'uid');
--     an old card blocked as lost (by an operator or its holder) needs no presence; blocked for
--     anything the system did (replaced, disputed, paid out, cashed out, a refund shortfall):
--     CARD_BLOCKED. The operator's `festival-cloud card swap` is the same request through
--     sp_card_swap (presence 'operator').
--   * Shape: the batch is split into runs. A run of bar orders and top-ups goes, as it is, to
--     revision 0014's procedure (renamed ledger_process_plain_requests); each void or card swap is
--     locked, decided (ledger_decide_void / ledger_decide_card_swap: pure) and written by the same
--     ledger_write_requests as every request (claims, balances, transaction and postings in one
--     INSERT, audit, cache, seqs), which now also writes what a void or a swap decided beyond its
--     outcome (ledger_request.decided: its postings and its record). A void therefore sees an
--     order decided earlier in the same batch.
--
-- Lock order within a void or swap: cards (card_uid order), the deposit account, the SUN counters
-- (card_uid order), the kiosk (seqs). A batch that mixes runs locks run by run, so two batches
-- can deadlock: PostgreSQL breaks it and the loser's whole batch is retried (Ledger._transaction:
-- 40P01), nothing half-applied.

-- ---------------------------------------------------------------------------------------------
-- 1. Schema

ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return', 'void', 'card_swap'));

ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_kind_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_kind_check
    CHECK (kind IN ('bar_order', 'checkpoint_recharge', 'void', 'card_swap'));

-- The card that replaced this one (a card swap); a replaced card stays blocked.
ALTER TABLE cards
    ADD COLUMN replaced_by ledger_card_uid,
    ADD CONSTRAINT cards_replaced_is_blocked CHECK (replaced_by IS NULL OR status = 'blocked'),
    ADD CONSTRAINT cards_replaced_by_another CHECK (replaced_by <> card_uid);

-- The kiosk's clock at the tap (the request's created_at_ms): what the void window is measured
-- from. NULL for orders applied before revision 0016.
ALTER TABLE bar_orders ADD COLUMN created_at_ms bigint;

CREATE TABLE voids (
    original_request_id text PRIMARY KEY,
    request_id text NOT NULL UNIQUE,
    order_id uuid NOT NULL UNIQUE,
    transaction_id uuid NOT NULL UNIQUE,
    kiosk_id text NOT NULL,
    card_uid text NOT NULL,            -- the order's card
    credited_card_uid text NOT NULL,   -- where the money went: that card, or its replacement
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),  -- the order's total
    debt_paid_cents bigint NOT NULL CHECK (debt_paid_cents BETWEEN 0 AND amount_cents),
    deposit_cents bigint NOT NULL,     -- what left the deposit account (deposits - returns)
    staff_id text,
    created_at timestamptz NOT NULL
);
CREATE TRIGGER voids_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON voids
    FOR EACH STATEMENT EXECUTE FUNCTION trg_forbid_change();

CREATE TABLE card_swaps (
    request_id text PRIMARY KEY,
    old_card_uid text NOT NULL UNIQUE,  -- a card is replaced once
    new_card_uid text NOT NULL,
    transaction_id uuid NOT NULL UNIQUE,
    kiosk_id text,                      -- NULL: the operator's card swap
    staff_id text,
    -- how the old card was accounted for: blocked as lost, its SUN message verified, presented
    -- in uid mode (nothing proves it), or the operator's word
    presence text NOT NULL CHECK (presence IN ('lost', 'sun', 'uid', 'operator')),
    balance_cents bigint NOT NULL CHECK (balance_cents >= 0),  -- what the old card held
    debt_cents bigint NOT NULL CHECK (debt_cents >= 0),        -- and what it owed
    created_at timestamptz NOT NULL
);
CREATE INDEX card_swaps_new_card ON card_swaps (new_card_uid);
CREATE TRIGGER card_swaps_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON card_swaps
    FOR EACH STATEMENT EXECUTE FUNCTION trg_forbid_change();

-- ---------------------------------------------------------------------------------------------
-- 2. What the procedures read of a request

ALTER TYPE ledger_request
    ADD ATTRIBUTE old_card_uid text,
    ADD ATTRIBUTE original_request_id text,
    -- sun mode: the consumer's verdict on a card swap's old_card_sun (as sun_counter/sun_failure)
    ADD ATTRIBUTE old_sun_counter integer,
    ADD ATTRIBUTE old_sun_failure text,
    -- set by ledger_process_counter_request only (a caller's is removed): what a void or card
    -- swap decided beyond its outcome, for ledger_write_requests - its postings
    -- [{account_id, amount_cents, balance_after_cents}] and its record ("void" / "swap")
    ADD ATTRIBUTE decided jsonb;

-- What a void or card swap decided (ledger_decide_void, ledger_decide_card_swap).
CREATE TYPE ledger_counter_decision AS (
    error_code text,      -- NULL: approved
    message text,
    net_delta_cents bigint);  -- what the credited card's net position (balance - debt) moves by

-- ---------------------------------------------------------------------------------------------
-- 3. Limits and names

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
        -- 0016: how long after its created_at_ms an order may be voided
        -- (FESTIVAL_VOID_WINDOW_S; protocol/limits.py VOID_WINDOW_S_DEFAULT)
        WHEN 'void_window_s' THEN RETURN 900;
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
        -- 0016: how many replacements a void follows from the order's card (a chain of swaps)
        WHEN 'replacements_followed_max' THEN RETURN 32;
        ELSE
            RAISE EXCEPTION 'unknown ledger limit %', p_name
                USING ERRCODE = 'invalid_parameter_value';
    END CASE;
END
$$;

CREATE OR REPLACE FUNCTION ledger_source_function(p_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_type
        WHEN 'bar_order' THEN 'process-bar-order'
        WHEN 'checkpoint_recharge' THEN 'process-checkpoint-recharge'
        WHEN 'void' THEN 'process-void'
        WHEN 'card_swap' THEN 'process-card-swap'
    END
$$;

-- Whether a blocked card's reason is one the system gave it (replaced, disputed, paid out,
-- cashed out, a refund it could not cover): such a card cannot be swapped. Any other reason is
-- a holder's or an operator's (lost, stolen, broken): swappable without the band.
CREATE FUNCTION ledger_blocked_by_the_system(p_reason text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(p_reason, '')
           ~* '(replaced by|payment disputed|payout|cashed out|refund shortfall)'
$$;

-- The card that holds what p_card_uid held: itself, or the last card of its chain of
-- replacements (read without locks: the procedure that moves money locks that card).
CREATE FUNCTION ledger_replacement_of(p_card_uid text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_card_uid text := p_card_uid;
    v_next text;
BEGIN
    FOR v_hop IN 1 .. ledger_limit('replacements_followed_max') LOOP
        SELECT c.replaced_by INTO v_next FROM cards c WHERE c.card_uid = v_card_uid;
        EXIT WHEN v_next IS NULL;
        v_card_uid := v_next;
    END LOOP;
    RETURN v_card_uid;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 4. Decide: pure functions of what the procedure read under its locks

-- A void (PROTOCOL.md `void`), in its order of rules. p_original: the processed request it
-- names (NULL fields: none); p_order: that bar order's row; p_deposit_cents: what the order put
-- on the deposit account (deposits - returns; NULL: no deposit or return line); p_voided: it
-- was voided before; p_card_exists: the request's card exists; p_deposit_balance_cents: the
-- deposit account's balance (NULL: not read, the order has no deposit lines).
CREATE FUNCTION ledger_decide_void(
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

-- A card swap (PROTOCOL.md `card_swap`), in its order of rules. p_old / p_new: the cards (NULL
-- fields: unknown); p_presence: how an active old card was presented ('sun', 'uid',
-- 'operator'; NULL: it was not); p_new_sun_problem: why the new band's SUN message failed.
CREATE FUNCTION ledger_decide_card_swap(
    r ledger_request, p_old cards, p_new cards, p_presence text, p_new_sun_problem text,
    p_balance_cents_max bigint)
RETURNS ledger_counter_decision
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_decision ledger_counter_decision;
    v_net bigint;
BEGIN
    v_decision.net_delta_cents := 0;
    IF p_new_sun_problem IS NOT NULL THEN
        v_decision.error_code := 'CARD_NOT_GENUINE';
        v_decision.message := ledger_sun_message(p_new_sun_problem);
    ELSIF p_old.card_uid IS NULL THEN
        v_decision.error_code := 'CARD_NOT_FOUND';
        v_decision.message := 'Unknown old wristband: nothing to move';
    ELSIF p_old.status <> 'active'
          AND (p_old.replaced_by IS NOT NULL OR ledger_blocked_by_the_system(p_old.blocked_reason)) THEN
        v_decision.error_code := 'CARD_BLOCKED';
        v_decision.message := left('Old wristband cannot be replaced: '
                                   || coalesce(p_old.blocked_reason, 'blocked'), 200);
    ELSIF p_old.status = 'active' AND p_presence IS NULL THEN
        v_decision.error_code := 'CARD_BLOCKED';
        v_decision.message := 'Old wristband not presented: block it as lost first';
    ELSIF p_new.card_uid IS NOT NULL AND p_new.status <> 'active' THEN
        v_decision.error_code := 'CARD_BLOCKED';
        v_decision.message := 'New wristband blocked: use another one';
    ELSE
        v_net := p_old.balance_cents - p_old.debt_cents;
        IF coalesce(p_new.balance_cents - p_new.debt_cents, 0) + v_net > p_balance_cents_max THEN
            v_decision.error_code := 'BALANCE_LIMIT_EXCEEDED';
            v_decision.message := 'Balance limit exceeded';
        ELSE
            v_decision.message := 'Wristband replaced';
            v_decision.net_delta_cents := v_net;
        END IF;
    END IF;
    RETURN v_decision;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 5. One void or card swap: lock, decide, write (through ledger_write_requests)

CREATE FUNCTION ledger_process_counter_request(
    p_request jsonb, p_balance_cents_max bigint, p_void_window_s integer, p_operator boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_document jsonb := p_request - 'decided';
    r ledger_request := jsonb_populate_record(NULL::ledger_request, p_request - 'decided');
    v_claim processed_requests;
    v_decision ledger_counter_decision;
    v_outcome jsonb;
    v_status text;
    v_tx uuid;
    -- the card whose balances the outcome carries, as it was and as it will be
    v_card cards;
    v_card_uid text;
    v_previous bigint;
    v_new bigint;
    v_new_debt bigint;
    v_net bigint;
    v_postings jsonb := '[]';
    v_record jsonb;
    -- void
    v_original processed_requests;
    v_order bar_orders;
    v_deposit_cents bigint;
    v_voided boolean := false;
    v_deposit_account_id bigint;
    v_deposit_balance bigint;
    v_hops integer := 0;
    -- card swap
    v_old cards;
    v_new_card cards;
    v_presence text;
    v_new_sun_problem text;
    v_sun_uids text[];
    v_sun_uid text;
BEGIN
    IF r.request_id IS NULL OR r.card_uid IS NULL OR r.staff_id IS NULL
       OR r.source IS NULL OR r.source NOT IN ('mqtt', 'http')
       OR NOT coalesce(r.payload_sha256 ~ '^[0-9a-fA-F]{64}$', false)
       OR (r.kiosk_id IS NULL AND NOT p_operator)
       -- a kiosk's request: only what arrived over MQTT from a kiosk (or the operator's own)
       OR (r.source <> 'mqtt' AND NOT p_operator)
       OR NOT ledger_card_uid_valid(r.card_uid)
       OR (r.type = 'void' AND r.original_request_id IS NULL)
       OR (r.type = 'card_swap' AND (NOT ledger_card_uid_valid(r.old_card_uid)
                                     OR r.old_card_uid = r.card_uid))
       OR r.type NOT IN ('void', 'card_swap') OR r.type IS NULL THEN
        RAISE EXCEPTION 'malformed void or card swap % (request_id, card_uid, staff_id, a hex payload_sha256, an MQTT kiosk, and original_request_id or a different old_card_uid are required)',
            left(coalesce(r.request_id, '?'), 64)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF r.sun_failure IS NOT NULL AND r.sun_failure NOT IN (
           'missing', 'malformed', 'not_ours', 'wrong_uid', 'bad_mac')
       OR r.old_sun_failure IS NOT NULL AND r.old_sun_failure NOT IN (
           'missing', 'malformed', 'not_ours', 'wrong_uid', 'bad_mac')
       OR (r.sun_failure IS NOT NULL AND r.sun_counter IS NOT NULL)
       OR (r.old_sun_failure IS NOT NULL AND r.old_sun_counter IS NOT NULL) THEN
        RAISE EXCEPTION 'request %: a SUN verdict that is not the consumer''s', r.request_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- 1. The cards, locked in card_uid order.
    IF r.type = 'void' THEN
        -- the request's card, or the card that replaced it (followed, then locked; a swap that
        -- replaced it meanwhile is seen once the lock is held, and followed too)
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
    ELSE
        SELECT * INTO v_old FROM cards WHERE card_uid = r.old_card_uid;
        PERFORM 1 FROM cards WHERE card_uid IN (r.old_card_uid, r.card_uid)
         ORDER BY card_uid FOR UPDATE;
        SELECT * INTO v_old FROM cards WHERE card_uid = r.old_card_uid;
        SELECT * INTO v_new_card FROM cards WHERE card_uid = r.card_uid;
        v_card := v_new_card;
    END IF;

    -- 2. Seen before (read under the card locks): the stored outcome again, or a conflict.
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

    -- 3. Decide.
    IF r.type = 'void' THEN
        SELECT * INTO v_original FROM processed_requests WHERE request_id = r.original_request_id;
        IF v_original.kind = 'bar_order' AND v_original.status = 'approved' THEN
            SELECT * INTO v_order FROM bar_orders
             WHERE order_id = (v_original.outcome ->> 'order_id')::uuid;
            SELECT sum(i.line_total_cents) INTO v_deposit_cents
              FROM bar_order_items i
             WHERE i.order_id = v_order.order_id AND (i.is_deposit OR i.is_return);
            v_voided := EXISTS (SELECT 1 FROM voids v
                                 WHERE v.original_request_id = r.original_request_id);
            IF coalesce(v_deposit_cents, 0) <> 0 THEN
                SELECT d.account_id, d.balance_cents INTO v_deposit_account_id, v_deposit_balance
                  FROM deposit_balances d JOIN accounts a ON a.account_id = d.account_id
                 WHERE a.name = 'deposit:cups'
                   FOR UPDATE OF d;
            END IF;
        END IF;
        v_decision := ledger_decide_void(
            r, v_original, v_order, v_deposit_cents, v_voided, v_deposit_balance, v_started,
            p_void_window_s);
    ELSE
        -- the SUN counters: accepted whatever the outcome, in card_uid order (the lock order)
        SELECT array_agg(u ORDER BY u) INTO v_sun_uids
          FROM unnest(ARRAY[CASE WHEN r.sun_counter IS NOT NULL THEN r.card_uid END,
                            CASE WHEN r.old_sun_counter IS NOT NULL THEN r.old_card_uid END]) u
         WHERE u IS NOT NULL;
        v_new_sun_problem := r.sun_failure;
        FOREACH v_sun_uid IN ARRAY coalesce(v_sun_uids, '{}') LOOP
            IF v_sun_uid = r.card_uid THEN
                IF NOT sp_accept_sun_counter(r.card_uid, r.sun_counter) THEN
                    v_new_sun_problem := 'stale_counter';
                END IF;
            ELSIF sp_accept_sun_counter(r.old_card_uid, r.old_sun_counter) THEN
                v_presence := 'sun';
            END IF;
        END LOOP;
        IF p_operator THEN
            v_presence := 'operator';
        ELSIF r.old_sun_counter IS NULL AND r.old_sun_failure IS NULL
              AND r.sun_counter IS NULL AND r.sun_failure IS NULL THEN
            v_presence := 'uid';  -- uid mode: nothing can prove the band is here
        END IF;
        v_decision := ledger_decide_card_swap(
            r, v_old, v_new_card, v_presence, v_new_sun_problem, p_balance_cents_max);
        IF v_old.status = 'blocked' THEN
            v_presence := 'lost';
        END IF;
    END IF;

    -- 4. The outcome and, approved, what moves.
    v_previous := v_card.balance_cents;
    v_new := v_previous;
    v_new_debt := v_card.debt_cents;
    IF v_decision.error_code IS NULL THEN
        v_tx := ledger_uuid7();
        IF r.type = 'card_swap' AND v_card.card_uid IS NULL THEN
            v_card := ledger_open_card(r.card_uid);  -- the new band: opened by the swap
            v_previous := 0;
        END IF;
        v_net := v_card.balance_cents - v_card.debt_cents + v_decision.net_delta_cents;
        v_new := greatest(v_net, 0);
        v_new_debt := greatest(-v_net, 0);
        -- the credited card: its balance, and its receivable by what its debt moves
        v_postings := jsonb_build_array(jsonb_build_object(
            'account_id', v_card.account_id, 'amount_cents', v_new - v_card.balance_cents,
            'balance_after_cents', v_new));
        IF v_new_debt <> v_card.debt_cents THEN
            v_postings := v_postings || jsonb_build_object(
                'account_id', ledger_system_account('receivable:' || v_card.card_uid),
                'amount_cents', v_card.debt_cents - v_new_debt);
        END IF;
        IF r.type = 'void' THEN
            IF v_order.total_cents - coalesce(v_deposit_cents, 0) <> 0 THEN
                v_postings := v_postings || jsonb_build_object(
                    'account_id', ledger_system_account('sales:' || v_order.kiosk_id),
                    'amount_cents', -(v_order.total_cents - coalesce(v_deposit_cents, 0)));
            END IF;
            IF coalesce(v_deposit_cents, 0) <> 0 THEN
                v_postings := v_postings || jsonb_build_object(
                    'account_id', v_deposit_account_id, 'amount_cents', -v_deposit_cents);
                v_deposit_balance := v_deposit_balance - v_deposit_cents;
            END IF;
            v_record := jsonb_build_object('void', jsonb_build_object(
                'order_id', v_order.order_id, 'credited_card_uid', v_card.card_uid,
                'amount_cents', v_order.total_cents,
                'debt_paid_cents', v_card.debt_cents - v_new_debt,
                'deposit_cents', coalesce(v_deposit_cents, 0)));
        ELSE
            -- the old card: everything leaves it
            v_postings := v_postings || jsonb_build_object(
                'account_id', v_old.account_id, 'amount_cents', -v_old.balance_cents,
                'balance_after_cents', 0);
            IF v_old.debt_cents <> 0 THEN
                v_postings := v_postings || jsonb_build_object(
                    'account_id', ledger_system_account('receivable:' || v_old.card_uid),
                    'amount_cents', v_old.debt_cents);
            END IF;
            v_record := jsonb_build_object('swap', jsonb_build_object(
                'presence', v_presence, 'balance_cents', v_old.balance_cents,
                'debt_cents', v_old.debt_cents));
        END IF;
    END IF;
    v_status := CASE WHEN v_decision.error_code IS NULL THEN 'approved' ELSE 'declined' END;
    -- no balances for a card that does not exist (PROTOCOL.md results): CARD_NOT_FOUND (the old
    -- band), and CARD_NOT_GENUINE or VOID_NOT_ALLOWED on an unknown card; any other decline on
    -- an unknown new band carries 0, what it would have been opened with
    IF v_decision.error_code = 'CARD_NOT_FOUND'
       OR (v_card.card_uid IS NULL
           AND v_decision.error_code IN ('CARD_NOT_GENUINE', 'VOID_NOT_ALLOWED')) THEN
        v_previous := NULL;
        v_new := NULL;
        v_new_debt := NULL;
    ELSIF v_card.card_uid IS NULL THEN
        v_previous := 0;
        v_new := 0;
        v_new_debt := 0;
    END IF;
    v_outcome := ledger_outcome(
        r.request_id, v_status, v_decision.error_code, v_decision.message, v_started,
        r.card_uid, v_tx, v_previous, v_new)
        || jsonb_build_object('debt_cents', v_new_debt);

    -- 5. Write it (claim, balances, transaction and postings, record, audit, cache, seq).
    IF v_decision.error_code IS NULL THEN
        v_document := v_document || jsonb_build_object(
            'decided', v_record || jsonb_build_object('postings', v_postings));
        RETURN ledger_write_requests(
            jsonb_build_array(v_document),
            ARRAY[ROW('new', v_outcome, NULL, 0)::ledger_decided],
            CASE WHEN r.type = 'void' THEN ARRAY[v_card.card_uid::text]
                 ELSE ARRAY[v_card.card_uid::text, v_old.card_uid::text] END,
            CASE WHEN r.type = 'void' THEN ARRAY[v_new] ELSE ARRAY[v_new, 0::bigint] END,
            CASE WHEN r.type = 'void' THEN ARRAY[v_new_debt]
                 ELSE ARRAY[v_new_debt, 0::bigint] END,
            CASE WHEN r.type = 'void' THEN ARRAY[true] ELSE ARRAY[true, true] END,
            v_deposit_account_id,
            CASE WHEN coalesce(v_deposit_cents, 0) <> 0 THEN v_deposit_balance END,
            v_started) -> 0;
    END IF;
    RETURN ledger_write_requests(
        jsonb_build_array(v_document), ARRAY[ROW('new', v_outcome, NULL, 0)::ledger_decided],
        '{}', '{}', '{}', '{}', NULL, NULL, v_started) -> 0;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 6. Write: revision 0013's, with what a void or a card swap decided, and the order's created_at_ms
-- (marked 0016)

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
         WHERE (p.always OR p.amount_cents <> 0)
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
-- 6b. festival-cloud check: revision 0013's ledger_check_accounts, with replaced cards and voids
-- (marked 0016)

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
END
$$;

-- ---------------------------------------------------------------------------------------------
-- 7. The batch: runs of bar orders and top-ups to revision 0014's procedure, each void or card
-- swap on its own, in input order, in the caller's one transaction.

ALTER FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint, integer)
    RENAME TO ledger_process_plain_requests;

CREATE FUNCTION ledger_process_requests(
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
    -- A batch without voids and swaps (nearly every one) goes through unchanged.
    IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(p_requests) x
                    WHERE x ->> 'type' IN ('void', 'card_swap')) THEN
        RETURN ledger_process_plain_requests(
            p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
            p_menu_grace_s);
    END IF;
    FOR v_request IN SELECT x.value FROM jsonb_array_elements(p_requests) WITH ORDINALITY x
                      ORDER BY x.ordinality LOOP
        IF v_request ->> 'type' IN ('void', 'card_swap') THEN
            IF jsonb_array_length(v_run) > 0 THEN
                v_outcomes := v_outcomes || ledger_process_plain_requests(
                    v_run, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
                    p_menu_grace_s);
                v_run := '[]';
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

DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer);
DROP FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer);

CREATE FUNCTION sp_process_batch(
    p_requests jsonb,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'),
    p_menu_grace_s integer DEFAULT ledger_limit('menu_grace_s'),
    p_void_window_s integer DEFAULT ledger_limit('void_window_s'))
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        p_requests, p_balance_cents_max, p_topup_cents_max, p_return_cents_max,
        p_menu_grace_s, p_void_window_s)
$$;

CREATE FUNCTION sp_handle_request(
    p_request jsonb,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'),
    p_topup_cents_max bigint DEFAULT ledger_limit('topup_cents_max'),
    p_return_cents_max bigint DEFAULT ledger_limit('return_cents_max'),
    p_menu_grace_s integer DEFAULT ledger_limit('menu_grace_s'),
    p_void_window_s integer DEFAULT ledger_limit('void_window_s'))
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_requests(
        jsonb_build_array(p_request), p_balance_cents_max, p_topup_cents_max,
        p_return_cents_max, p_menu_grace_s, p_void_window_s) -> 0
$$;

-- The info desk's card swap (festival-cloud card swap OLD NEW): the card_swap request with the
-- operator's word for the old band's presence, idempotent by p_request_id like a kiosk's.
CREATE FUNCTION sp_card_swap(
    p_request_id text, p_old_card_uid text, p_new_card_uid text,
    p_balance_cents_max bigint DEFAULT ledger_limit('balance_cents_max'))
RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT ledger_process_counter_request(
        jsonb_build_object(
            'type', 'card_swap', 'request_id', p_request_id, 'card_uid', p_new_card_uid,
            'old_card_uid', p_old_card_uid, 'staff_id', 'operator', 'source', 'http',
            'payload_sha256', encode(sha256(convert_to(
                'card_swap ' || coalesce(p_old_card_uid, '') || ' '
                || coalesce(p_new_card_uid, ''), 'UTF8')), 'hex')),
        p_balance_cents_max, 0, true)
$$;

-- ---------------------------------------------------------------------------------------------
-- 8. Privileges: the helpers are the owner's; the services call the sp_ functions.

REVOKE EXECUTE ON FUNCTION
    ledger_blocked_by_the_system(text),
    ledger_replacement_of(text),
    ledger_decide_void(ledger_request, processed_requests, bar_orders, bigint, boolean, bigint,
                       timestamptz, integer),
    ledger_decide_card_swap(ledger_request, cards, cards, text, text, bigint),
    ledger_process_counter_request(jsonb, bigint, integer, boolean),
    ledger_process_plain_requests(jsonb, bigint, bigint, bigint, integer),
    ledger_process_requests(jsonb, bigint, bigint, bigint, integer, integer),
    sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer),
    sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer),
    sp_card_swap(text, text, text, bigint)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer)
    TO festival_service;
GRANT EXECUTE ON FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer)
    TO festival_service, festival_api;
GRANT EXECUTE ON FUNCTION sp_card_swap(text, text, text, bigint) TO festival_service;
GRANT SELECT ON voids, card_swaps TO festival_service, festival_api;
