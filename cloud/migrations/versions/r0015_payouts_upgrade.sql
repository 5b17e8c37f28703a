-- Revision 0015: payouts after the festival (DESIGN.md "Attendee portal and payouts").
--   * payouts: one row per part of a payout request (kind stripe | bank | donation | fee), each
--     with its own state: bank pending -> exported -> paid | failed; stripe pending -> paid |
--     failed; donation and fee are paid at once. request_id groups the parts of one request.
--   * payout_audit: every state change.
--   * sp_payout_request: in one transaction, locks the card, refuses a debt / no balance / an
--     unfinished payout (409 at the API), posts the whole balance to 'payout:pending', splits
--     it, blocks the card. A repeated request_key returns the first request (two tabs, one payout).
--   * sp_payout_fail: a failed part's money goes back to the card; the card is unblocked when
--     nothing of the payout is still outstanding.
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit', 'loss',
                    'receivable', 'payout'));
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return'));

CREATE TABLE payouts (
    payout_id uuid PRIMARY KEY,
    request_id uuid NOT NULL,
    card_uid text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('stripe', 'bank', 'donation', 'fee')),
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    state text NOT NULL CHECK (state IN ('pending', 'exported', 'paid', 'failed')),
    payment_intent_id text CHECK (length(payment_intent_id) <= 255),
    topup_id text,
    iban text CHECK (length(iban) <= 34),
    account_holder text CHECK (length(account_holder) <= 70),
    request_key text,
    previous_status text NOT NULL,
    previous_blocked_reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'stripe' OR payment_intent_id IS NOT NULL),
    CHECK (kind <> 'bank' OR (iban IS NOT NULL AND account_holder IS NOT NULL))
);
CREATE INDEX payouts_card_idx ON payouts (card_uid, created_at);
CREATE INDEX payouts_state_idx ON payouts (state, kind);

CREATE TABLE payout_audit (
    audit_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payout_id uuid NOT NULL,
    from_state text,
    to_state text NOT NULL,
    reason text CHECK (length(reason) <= 500),
    at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION ledger_payout_add(
    p_request uuid, p_card cards, p_kind text, p_amount bigint, p_state text, p_pi text,
    p_topup text, p_iban text, p_holder text, p_key text, p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid := ledger_uuid7();
BEGIN
    IF p_amount <= 0 THEN
        RETURN;
    END IF;
    INSERT INTO payouts (payout_id, request_id, card_uid, kind, amount_cents, state,
                         payment_intent_id, topup_id, iban, account_holder, request_key,
                         previous_status, previous_blocked_reason, created_at, updated_at)
    VALUES (v_id, p_request, p_card.card_uid, p_kind, p_amount, p_state, p_pi, p_topup, p_iban,
            p_holder, p_key, p_card.status,
            p_card.blocked_reason, p_at, p_at);
    INSERT INTO payout_audit (payout_id, from_state, to_state, reason, at)
    VALUES (v_id, NULL, p_state, 'payout requested', p_at);
END
$$;

-- The outcome: {"status": "created"|"replayed"|"refused", ...}.
CREATE FUNCTION sp_payout_request(
    p_card_uid text, p_iban text, p_holder text, p_donate_cents bigint, p_fee_cents bigint,
    p_request_key text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_at timestamptz := clock_timestamp();
    v_card cards;
    v_request uuid;
    v_rest bigint;
    v_donation bigint;
    v_fee bigint;
    v_stripe bigint := 0;
    v_part bigint;
    v_topup record;
    v_tx uuid := ledger_uuid7();
    v_pending bigint;
BEGIN
    SELECT * INTO v_card FROM cards WHERE card_uid = p_card_uid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('status', 'refused', 'reason', 'no balance');
    END IF;
    -- Two tabs: the same key, one payout.
    SELECT request_id INTO v_request FROM payouts
     WHERE card_uid = p_card_uid AND request_key = p_request_key LIMIT 1;
    IF FOUND THEN
        RETURN ledger_payout_summary(v_request, 'replayed');
    END IF;
    IF v_card.debt_cents > 0 THEN
        RETURN jsonb_build_object('status', 'refused', 'reason', 'the card has a debt');
    END IF;
    IF EXISTS (SELECT 1 FROM payouts WHERE card_uid = p_card_uid
                AND state IN ('pending', 'exported')) THEN
        RETURN jsonb_build_object('status', 'refused', 'reason', 'a payout is not finished');
    END IF;
    IF EXISTS (SELECT 1 FROM stripe_disputes d JOIN topups t USING (topup_id)
                WHERE t.card_uid = p_card_uid AND d.status NOT IN ('won', 'lost')) THEN
        RETURN jsonb_build_object('status', 'refused', 'reason', 'an open Stripe dispute');
    END IF;
    IF v_card.balance_cents <= 0 THEN
        RETURN jsonb_build_object('status', 'refused', 'reason', 'no balance');
    END IF;
    IF p_donate_cents < 0 OR p_donate_cents > v_card.balance_cents THEN
        RETURN jsonb_build_object('status', 'invalid', 'reason', 'donation above the balance');
    END IF;
    v_request := ledger_uuid7();
    v_rest := v_card.balance_cents;
    v_donation := p_donate_cents;
    v_rest := v_rest - v_donation;
    v_fee := least(greatest(p_fee_cents, 0), v_rest);
    v_rest := v_rest - v_fee;
    PERFORM ledger_payout_add(v_request, v_card, 'donation', v_donation, 'paid', NULL, NULL,
                              NULL, NULL, p_request_key, v_at);
    PERFORM ledger_payout_add(v_request, v_card, 'fee', v_fee, 'paid', NULL, NULL, NULL, NULL,
                              p_request_key, v_at);
    FOR v_topup IN
        SELECT t.topup_id, t.payment_intent_id,
               t.credited_cents - t.refunded_cents
               - coalesce((SELECT sum(p.amount_cents) FROM payouts p
                            WHERE p.topup_id = t.topup_id AND p.kind = 'stripe'
                              AND p.state IN ('pending', 'paid')), 0) AS rest
          FROM topups t
         WHERE t.card_uid = p_card_uid AND t.status = 'credited'
           AND t.payment_intent_id IS NOT NULL
         ORDER BY t.created_at DESC, t.topup_id DESC
    LOOP
        EXIT WHEN v_rest <= 0;
        v_part := least(v_rest, greatest(v_topup.rest, 0));
        CONTINUE WHEN v_part <= 0;
        PERFORM ledger_payout_add(v_request, v_card, 'stripe', v_part, 'pending',
                                  v_topup.payment_intent_id, v_topup.topup_id, NULL, NULL,
                                  p_request_key, v_at);
        v_stripe := v_stripe + v_part;
        v_rest := v_rest - v_part;
    END LOOP;
    IF v_rest > 0 THEN
        IF p_iban IS NULL OR p_holder IS NULL THEN
            RAISE EXCEPTION 'a bank transfer needs an IBAN and an account holder'
                USING ERRCODE = 'check_violation';
        END IF;
        PERFORM ledger_payout_add(v_request, v_card, 'bank', v_rest, 'pending', NULL, NULL,
                                  p_iban, p_holder, p_request_key, v_at);
    END IF;
    -- The whole balance leaves the card; double entry: card -balance, payout:pending +balance.
    INSERT INTO transactions (transaction_id, kind, request_id, created_at)
    VALUES (v_tx, 'payout', 'payout:' || v_request::text, v_at);
    INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
    VALUES (v_tx, v_card.account_id, -v_card.balance_cents, 0),
           (v_tx, ledger_system_account('payout:pending'), v_card.balance_cents, NULL);
    UPDATE cards SET balance_cents = 0, status = 'blocked',
                     blocked_reason = ledger_block_reason(status, blocked_reason,
                                                          'payout requested'),
                     updated_at = v_at
     WHERE card_uid = p_card_uid;
    PERFORM ledger_log(
        p_at => v_at, p_type => 'payout', p_status => 'approved', p_edge => 'portal',
        p_card_uid => p_card_uid, p_amount_cents => v_card.balance_cents,
        p_previous_balance_cents => v_card.balance_cents, p_new_balance_cents => 0,
        p_transaction_id => v_tx, p_details => jsonb_build_object('payout_id', v_request));
    RETURN ledger_payout_summary(v_request, 'created');
END
$$;

CREATE FUNCTION ledger_payout_summary(p_request uuid, p_status text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'status', p_status, 'payout_id', p_request,
        'amount_cents', coalesce(sum(amount_cents), 0),
        'donation_cents', coalesce(sum(amount_cents) FILTER (WHERE kind = 'donation'), 0),
        'fee_cents', coalesce(sum(amount_cents) FILTER (WHERE kind = 'fee'), 0),
        'stripe_refund_cents', coalesce(sum(amount_cents) FILTER (WHERE kind = 'stripe'), 0),
        'bank_transfer_cents', coalesce(sum(amount_cents) FILTER (WHERE kind = 'bank'), 0))
      FROM payouts WHERE request_id = p_request
$$;

-- A failed part (bank or stripe): its amount back to the card; the card gets back the status it
-- had before the payout when no part of it is outstanding. NULL when there is nothing to fail.
CREATE FUNCTION sp_payout_fail(p_payout_id uuid, p_reason text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_at timestamptz := clock_timestamp();
    v_payout payouts;
    v_card cards;
    v_tx uuid := ledger_uuid7();
BEGIN
    SELECT * INTO v_payout FROM payouts WHERE payout_id = p_payout_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO STRICT v_card FROM cards WHERE card_uid = v_payout.card_uid FOR UPDATE;
    SELECT * INTO STRICT v_payout FROM payouts WHERE payout_id = p_payout_id FOR UPDATE;
    IF v_payout.kind NOT IN ('bank', 'stripe') OR v_payout.state NOT IN ('pending', 'exported')
    THEN
        RETURN NULL;
    END IF;
    UPDATE payouts SET state = 'failed', updated_at = v_at WHERE payout_id = p_payout_id;
    INSERT INTO payout_audit (payout_id, from_state, to_state, reason, at)
    VALUES (p_payout_id, v_payout.state, 'failed', left(p_reason, 500), v_at);
    INSERT INTO transactions (transaction_id, kind, request_id, created_at)
    VALUES (v_tx, 'payout_return', 'payout-fail:' || p_payout_id::text, v_at);
    INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
    VALUES (v_tx, ledger_system_account('payout:pending'), -v_payout.amount_cents, NULL),
           (v_tx, v_card.account_id, v_payout.amount_cents,
            v_card.balance_cents + v_payout.amount_cents);
    UPDATE cards SET balance_cents = balance_cents + v_payout.amount_cents,
                     status = CASE WHEN EXISTS (
                         SELECT 1 FROM payouts p WHERE p.request_id = v_payout.request_id
                            AND p.state IN ('pending', 'exported'))
                         THEN status ELSE v_payout.previous_status END,
                     blocked_reason = CASE WHEN EXISTS (
                         SELECT 1 FROM payouts p WHERE p.request_id = v_payout.request_id
                            AND p.state IN ('pending', 'exported'))
                         THEN blocked_reason ELSE v_payout.previous_blocked_reason END,
                     updated_at = v_at
     WHERE card_uid = v_card.card_uid;
    PERFORM ledger_log(
        p_at => v_at, p_type => 'payout_fail', p_status => 'approved', p_edge => 'operator',
        p_card_uid => v_card.card_uid, p_amount_cents => v_payout.amount_cents,
        p_previous_balance_cents => v_card.balance_cents,
        p_new_balance_cents => v_card.balance_cents + v_payout.amount_cents,
        p_transaction_id => v_tx, p_details => jsonb_build_object(
            'payout_id', p_payout_id, 'reason', p_reason));
    RETURN jsonb_build_object('payout_id', p_payout_id, 'state', 'failed',
                              'returned_cents', v_payout.amount_cents);
END
$$;

REVOKE EXECUTE ON FUNCTION sp_payout_request(text, text, text, bigint, bigint, text),
    sp_payout_fail(uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_payout_request(text, text, text, bigint, bigint, text)
    TO festival_api, festival_service;
GRANT EXECUTE ON FUNCTION sp_payout_fail(uuid, text) TO festival_service;
GRANT SELECT ON payouts, payout_audit TO festival_service, festival_api;
-- The helpers are the owner's alone (tests/ledger/test_r0009_structure.py): the sp_ functions,
-- SECURITY DEFINER, call them.
REVOKE EXECUTE ON FUNCTION ledger_payout_add(uuid, cards, text, bigint, text, text, text, text,
                                             text, text, timestamptz) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ledger_payout_summary(uuid, text) FROM PUBLIC;

-- festival-cloud check: a payout's transactions name payout requests (r0002's definition with
-- that one exception; the downgrade restores it as it was).
CREATE OR REPLACE FUNCTION ledger_check(p_limit integer DEFAULT 20) RETURNS SETOF text
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
       -- (0015) A payout's transaction names its payout request, not a kiosk's request;
       -- a failed part's return names that part, which must have failed.
       AND NOT (t.kind = 'payout' AND EXISTS (
                    SELECT 1 FROM payouts o WHERE 'payout:' || o.request_id::text = t.request_id))
       AND NOT (t.kind = 'payout_return' AND EXISTS (
                    SELECT 1 FROM payouts o WHERE o.state = 'failed'
                       AND 'payout-fail:' || o.payout_id::text = t.request_id))
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
