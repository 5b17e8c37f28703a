-- Revision 0017: Stripe refunds of payout parts (DESIGN.md "Attendee portal and payouts").
--   * payouts gains the refund's bookkeeping: attempts, the lease of the attempt under way, the
--     backoff, Stripe's refund id and its last error. The state stays pending -> paid | failed.
--   * sp_payout_refund_claim: leases due pending Stripe parts (FOR UPDATE SKIP LOCKED, a lease of
--     p_lease_s seconds) and counts the attempt before Stripe is called: several API processes
--     never call Stripe for one part at once, and every attempt is on record.
--   * sp_payout_refund_finish: Stripe's answer. 'paid' (the refund id), 'retry' (a transient
--     error: due again after p_retry_after_s), 'failed' (refused for good: sp_payout_fail's rule,
--     the money back on the card).
--   * sp_payout_refunds_seen: the charge.refunded webhook names our refunds (metadata.payout_id):
--     a pending part whose refund Stripe reports is paid from then on.
--   * sp_process_stripe_refund: Stripe's cumulative amount_refunded minus what the ledger took
--     back already minus OUR payout parts of that top-up (paid, or pending and attempted - Stripe
--     may have refunded it while we wait for its answer) is what a dashboard refund takes from the
--     card; our own refunds take nothing (their money left the card with the payout request).
ALTER TABLE payouts
    ADD COLUMN refund_attempts integer NOT NULL DEFAULT 0 CHECK (refund_attempts >= 0),
    ADD COLUMN refund_next_attempt_at timestamptz,
    ADD COLUMN refund_leased_until timestamptz,
    ADD COLUMN stripe_refund_id text CHECK (length(stripe_refund_id) <= 255),
    ADD COLUMN refund_last_error text CHECK (length(refund_last_error) <= 500);
CREATE UNIQUE INDEX payouts_stripe_refund_idx ON payouts (stripe_refund_id)
    WHERE stripe_refund_id IS NOT NULL;

-- Lease up to p_limit due pending Stripe parts, oldest request first and within one request the
-- newest top-up first (the order sp_payout_request split them in).
CREATE FUNCTION sp_payout_refund_claim(p_limit integer, p_lease_s integer)
RETURNS TABLE (payout_id uuid, card_uid text, payment_intent_id text, amount_cents bigint,
               attempts integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RETURN QUERY
    WITH due AS (
        SELECT o.payout_id, o.created_at AS requested_at, t.created_at AS topped_up_at
          FROM payouts o LEFT JOIN topups t ON t.topup_id = o.topup_id
         WHERE o.kind = 'stripe' AND o.state = 'pending'
           AND (o.refund_leased_until IS NULL OR o.refund_leased_until <= now())
           AND (o.refund_next_attempt_at IS NULL OR o.refund_next_attempt_at <= now())
         ORDER BY o.created_at, t.created_at DESC, o.payout_id
         LIMIT greatest(p_limit, 0)
           FOR UPDATE OF o SKIP LOCKED),
    leased AS (
        UPDATE payouts r
           SET refund_attempts = r.refund_attempts + 1,
               refund_leased_until = now() + make_interval(secs => greatest(p_lease_s, 1)),
               updated_at = clock_timestamp()
          FROM due
         WHERE r.payout_id = due.payout_id
        RETURNING r.payout_id, r.card_uid, r.payment_intent_id, r.amount_cents,
                  r.refund_attempts, due.requested_at, due.topped_up_at)
    SELECT l.payout_id, l.card_uid, l.payment_intent_id, l.amount_cents, l.refund_attempts
      FROM leased l
     ORDER BY l.requested_at, l.topped_up_at DESC, l.payout_id;
END
$$;

-- A pending Stripe part becomes paid with Stripe's refund id (the one place that does it).
-- NULL when the part is not a pending Stripe part (then nothing changes).
CREATE FUNCTION ledger_payout_refund_paid(p_payout_id uuid, p_refund_id text, p_how text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_at timestamptz := clock_timestamp();
    v_payout payouts;
BEGIN
    UPDATE payouts
       SET state = 'paid',
           stripe_refund_id = left(p_refund_id, ledger_limit('stripe_id_characters_max')),
           refund_leased_until = NULL, refund_last_error = NULL, updated_at = v_at
     WHERE payout_id = p_payout_id AND kind = 'stripe' AND state = 'pending'
    RETURNING * INTO v_payout;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO payout_audit (payout_id, from_state, to_state, reason, at)
    VALUES (p_payout_id, 'pending', 'paid',
            left(format('stripe refund %s (%s)', p_refund_id, p_how),
                 ledger_limit('refund_error_characters_max')), v_at);
    PERFORM ledger_log(
        p_at => v_at, p_type => 'payout_refund', p_status => 'approved', p_edge => 'stripe-refund',
        p_card_uid => v_payout.card_uid, p_amount_cents => v_payout.amount_cents,
        p_details => jsonb_build_object('payout_id', p_payout_id, 'refund_id', p_refund_id,
                                        'payment_intent_id', v_payout.payment_intent_id,
                                        'attempts', v_payout.refund_attempts, 'how', p_how),
        p_request_id => 'payout-' || p_payout_id::text);
    RETURN jsonb_build_object('payout_id', p_payout_id, 'state', 'paid',
                              'refund_id', v_payout.stripe_refund_id);
END
$$;

-- Stripe's answer for one attempt: 'paid' (p_refund_id), 'retry' (p_error, due again after
-- p_retry_after_s) or 'failed' (p_error: refused for good, the money goes back to the card).
-- The part's state afterwards: {"payout_id", "state", ...}; NULL for no such Stripe part.
CREATE FUNCTION sp_payout_refund_finish(
    p_payout_id uuid, p_result text, p_refund_id text, p_error text, p_retry_after_s integer)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_at timestamptz := clock_timestamp();
    v_error text := left(p_error, ledger_limit('refund_error_characters_max'));
    v_payout payouts;
    v_outcome jsonb;
BEGIN
    IF p_result IS NULL OR p_result NOT IN ('paid', 'retry', 'failed')
       OR (p_result = 'paid' AND p_refund_id IS NULL) THEN
        RAISE EXCEPTION 'result must be paid (with a refund id), retry or failed'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO v_payout FROM payouts WHERE payout_id = p_payout_id AND kind = 'stripe';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF p_result = 'failed' AND v_payout.state = 'pending' THEN
        -- sp_payout_fail locks the card, then the part (its own order); then the error.
        v_outcome := sp_payout_fail(p_payout_id, 'stripe refused the refund: ' || v_error);
        IF v_outcome IS NOT NULL THEN
            UPDATE payouts SET refund_last_error = v_error, refund_leased_until = NULL
             WHERE payout_id = p_payout_id;
            RETURN v_outcome;
        END IF;
    END IF;
    SELECT * INTO STRICT v_payout FROM payouts WHERE payout_id = p_payout_id FOR UPDATE;
    IF p_result = 'paid' THEN
        v_outcome := ledger_payout_refund_paid(p_payout_id, p_refund_id, 'refunds API');
        IF v_outcome IS NOT NULL THEN
            RETURN v_outcome;
        END IF;
        IF v_payout.state = 'failed' THEN
            -- Failed by an operator while Stripe was refunding it: the attendee has the money
            -- twice. Recorded for a human; nothing is moved automatically.
            INSERT INTO payout_audit (payout_id, from_state, to_state, reason, at)
            VALUES (p_payout_id, 'failed', 'failed',
                    left(format('stripe refund %s arrived after the part failed: reconcile',
                                p_refund_id), ledger_limit('refund_error_characters_max')), v_at);
            PERFORM ledger_log(
                p_at => v_at, p_type => 'payout_refund', p_status => 'anomaly',
                p_edge => 'stripe-refund', p_card_uid => v_payout.card_uid,
                p_amount_cents => v_payout.amount_cents,
                p_details => jsonb_build_object('payout_id', p_payout_id,
                                                'refund_id', p_refund_id),
                p_request_id => 'payout-' || p_payout_id::text);
        END IF;
    ELSIF p_result = 'retry' AND v_payout.state = 'pending' THEN
        UPDATE payouts
           SET refund_next_attempt_at = v_at + make_interval(secs => greatest(p_retry_after_s, 0)),
               refund_leased_until = NULL, refund_last_error = v_error, updated_at = v_at
         WHERE payout_id = p_payout_id;
        INSERT INTO payout_audit (payout_id, from_state, to_state, reason, at)
        VALUES (p_payout_id, 'pending', 'pending',
                left(format('stripe refund attempt %s: %s; retry in %s s',
                            v_payout.refund_attempts, v_error, greatest(p_retry_after_s, 0)),
                     ledger_limit('refund_error_characters_max')), v_at);
        PERFORM ledger_log(
            p_at => v_at, p_type => 'payout_refund', p_status => 'retry',
            p_edge => 'stripe-refund', p_card_uid => v_payout.card_uid,
            p_amount_cents => v_payout.amount_cents,
            p_details => jsonb_build_object('payout_id', p_payout_id,
                                            'attempts', v_payout.refund_attempts,
                                            'error', v_error),
            p_request_id => 'payout-' || p_payout_id::text);
    END IF;
    SELECT * INTO STRICT v_payout FROM payouts WHERE payout_id = p_payout_id;
    RETURN jsonb_build_object('payout_id', p_payout_id, 'state', v_payout.state,
                              'refund_id', v_payout.stripe_refund_id,
                              'attempts', v_payout.refund_attempts);
END
$$;

-- The refunds a charge.refunded event lists ([{"id", "amount", "payout_id"}], from each refund's
-- metadata.payout_id): each that is one of our pending parts of this payment intent, for the
-- part's amount, makes the part paid. Returns how many parts are ours (paid now or before).
CREATE FUNCTION sp_payout_refunds_seen(p_payment_intent_id text, p_refunds jsonb)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_refund record;
    v_ours integer := 0;
BEGIN
    IF p_payment_intent_id IS NULL OR p_refunds IS NULL OR jsonb_typeof(p_refunds) <> 'array' THEN
        RETURN 0;
    END IF;
    FOR v_refund IN
        SELECT o.payout_id, o.state, r.id AS refund_id
          FROM jsonb_to_recordset(p_refunds) AS r(id text, amount bigint, payout_id text)
          JOIN payouts o ON o.payout_id::text = r.payout_id
         WHERE o.kind = 'stripe' AND o.payment_intent_id = p_payment_intent_id
           AND o.amount_cents = r.amount AND r.id IS NOT NULL
         ORDER BY o.payout_id
    LOOP
        IF v_refund.state = 'pending' THEN
            PERFORM ledger_payout_refund_paid(v_refund.payout_id, v_refund.refund_id,
                                              'charge.refunded webhook');
        END IF;
        v_ours := v_ours + 1;
    END LOOP;
    RETURN v_ours;
END
$$;

-- charge.refunded linked by the payment intent (revision 0009's, our payout parts counted).
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
    v_ours bigint;
    v_ours_only boolean;
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

    -- (0017) Our payout refunds of this top-up left the card with the payout request.
    SELECT coalesce(sum(o.amount_cents), 0) INTO v_ours FROM payouts o
     WHERE o.topup_id = v_topup.topup_id AND o.kind = 'stripe'
       AND (o.state = 'paid' OR (o.state = 'pending' AND o.refund_attempts > 0));
    -- Only what was credited can be taken back.
    v_delta := least(p_amount_refunded_cents, v_topup.credited_cents) - v_topup.refunded_cents
               - v_ours;
    SELECT * INTO v_card FROM cards WHERE card_uid = v_topup.card_uid FOR UPDATE;
    IF v_delta <= 0 THEN
        -- Stripe refunded more than the ledger took back: our payout refunds, nothing to take.
        v_ours_only := v_ours > 0 AND p_amount_refunded_cents > v_topup.refunded_cents;
        v_outcome := ledger_outcome(
            p_event_id, 'approved', NULL,
            CASE WHEN v_topup.credited_cents = 0
                 THEN 'Top-up was never credited: nothing to take back'
                 WHEN v_ours_only
                 THEN 'Refund of a payout: its money left the card with the payout request'
                 ELSE 'Refund already applied' END,
            v_started, v_topup.card_uid, NULL, v_card.balance_cents, v_card.balance_cents,
            p_replayed => v_topup.credited_cents > 0 AND NOT v_ours_only);
        PERFORM ledger_stripe_log(v_started, 'stripe_refund',
                                  CASE WHEN v_topup.credited_cents > 0 AND NOT v_ours_only
                                       THEN 'replayed'
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

REVOKE EXECUTE ON FUNCTION sp_payout_refund_claim(integer, integer),
    sp_payout_refund_finish(uuid, text, text, text, integer),
    sp_payout_refunds_seen(text, jsonb) FROM PUBLIC;
-- The runner lives in the API process (its lifespan) and in `festival-cloud payout refund`.
GRANT EXECUTE ON FUNCTION sp_payout_refund_claim(integer, integer),
    sp_payout_refund_finish(uuid, text, text, text, integer),
    sp_payout_refunds_seen(text, jsonb) TO festival_api, festival_service;
-- The helper is the owner's alone (tests/ledger/test_r0009_structure.py).
REVOKE EXECUTE ON FUNCTION ledger_payout_refund_paid(uuid, text, text) FROM PUBLIC;
