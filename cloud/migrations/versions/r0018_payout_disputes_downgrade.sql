-- Revision 0018 undone: r0015's sp_payout_request, as it was.
CREATE OR REPLACE FUNCTION sp_payout_request(
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

