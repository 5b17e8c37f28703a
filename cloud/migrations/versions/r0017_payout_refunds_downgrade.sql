-- Revision 0017 undone: revision 0009's sp_process_stripe_refund (as it was), the refund
-- procedures gone, the payouts' refund columns gone.
DROP FUNCTION sp_payout_refunds_seen(text, jsonb);
DROP FUNCTION sp_payout_refund_finish(uuid, text, text, text, integer);
DROP FUNCTION ledger_payout_refund_paid(uuid, text, text);
DROP FUNCTION sp_payout_refund_claim(integer, integer);

-- charge.refunded linked by the payment intent (revision 0002).
CREATE OR REPLACE FUNCTION sp_process_stripe_refund(
    p_event_id text,
    p_payment_intent_id text,
    p_amount_refunded_cents bigint,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_topup topups;
    v_card cards;
    v_delta bigint;
    v_shortfall bigint;
    v_new bigint;
    v_tx uuid;
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_payment_intent_id IS NULL OR p_amount_refunded_cents IS NULL
       OR p_amount_refunded_cents < 0 THEN
        RAISE EXCEPTION 'a refund needs event id, payment intent and amount_refunded >= 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    SELECT * INTO v_topup FROM topups WHERE payment_intent_id = p_payment_intent_id
     ORDER BY created_at LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        v_outcome := ledger_outcome(p_event_id, 'rejected', 'INVALID_REQUEST',
                                    'Unknown payment intent: nothing to reverse', v_started);
        PERFORM ledger_stripe_log(v_started, 'stripe_refund', 'rejected', NULL,
                                  p_amount_refunded_cents, v_outcome, p_event_id,
                                  p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;

    -- Only what was credited can be taken back.
    v_delta := least(p_amount_refunded_cents, v_topup.credited_cents) - v_topup.refunded_cents;
    SELECT * INTO v_card FROM cards WHERE card_uid = v_topup.card_uid FOR UPDATE;
    IF v_delta <= 0 THEN
        v_outcome := ledger_outcome(
            p_event_id, 'approved', NULL,
            CASE WHEN v_topup.credited_cents = 0
                 THEN 'Top-up was never credited: nothing to take back'
                 ELSE 'Refund already applied' END,
            v_started, v_topup.card_uid, NULL, v_card.balance_cents, v_card.balance_cents,
            p_replayed => v_topup.credited_cents > 0);
        PERFORM ledger_stripe_log(v_started, 'stripe_refund',
                                  CASE WHEN v_topup.credited_cents > 0 THEN 'replayed'
                                       ELSE 'approved' END,
                                  v_topup.card_uid, 0, v_outcome, p_event_id,
                                  p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;

    -- What the balance does not cover is a shortfall: the card is blocked.
    v_shortfall := v_delta - least(v_delta, v_card.balance_cents);
    SELECT t.transaction_id, t.new_balance_cents INTO v_tx, v_new
      FROM ledger_take_back(v_card, v_delta, 'shortfall:refunds',
                            CASE WHEN v_shortfall > 0 THEN 'refund shortfall' END,
                            p_event_id, v_topup.topup_id, v_started) t;
    UPDATE topups SET refunded_cents = refunded_cents + v_delta,
                      shortfall_cents = shortfall_cents + v_shortfall, updated_at = v_started
     WHERE topup_id = v_topup.topup_id;
    v_outcome := ledger_outcome(
        p_event_id, 'approved', NULL,
        CASE WHEN v_shortfall > 0
             THEN format('Refunded %s cents; %s cents not covered by the balance: card blocked',
                         v_delta, v_shortfall)
             ELSE format('Refunded %s cents', v_delta) END,
        v_started, v_card.card_uid, v_tx, v_card.balance_cents, v_new);
    PERFORM ledger_stripe_log(v_started, 'stripe_refund', 'approved', v_card.card_uid, v_delta,
                              v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
    RETURN v_outcome;
END
$$;

DROP INDEX payouts_stripe_refund_idx;
ALTER TABLE payouts
    DROP COLUMN refund_last_error,
    DROP COLUMN stripe_refund_id,
    DROP COLUMN refund_leased_until,
    DROP COLUMN refund_next_attempt_at,
    DROP COLUMN refund_attempts;
