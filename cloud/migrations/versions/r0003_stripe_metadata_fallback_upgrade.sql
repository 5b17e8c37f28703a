-- Revision 0003: charge.refunded / charge.dispute.* linked by the payment intent first and the
-- card metadata second (DESIGN.md, "HTTP (FastAPI)").
--
-- sp_handle_stripe_refund / sp_handle_stripe_dispute are the webhook's entry points from this
-- revision on. They do not replace revision 0002's procedures, they wrap them:
--   * a top-up whose payment_intent_id is the event's  -> exactly sp_process_stripe_refund /
--     sp_process_stripe_dispute (same decisions, same locks, same outcome);
--   * otherwise, when the event names an existing card (metadata.card_uid, a valid card UID):
--       - a dispute blocks that card ('payment disputed (unmatched payment: reconcile)');
--       - a refund takes NO money (we cannot know what was credited for a payment we never
--         linked) but blocks the card ('refund of an unmatched payment: reconcile'), so nothing
--         more can be spent until an operator reconciles; the outcome is rejected
--         INVALID_REQUEST (an anomaly for a human), logged with status 'anomaly';
--   * otherwise (no card uid, an invalid one, or a card that does not exist) -> revision 0002's
--     "unknown payment intent" anomaly, unchanged.
-- The metadata outcomes carry "linked_by": "card_metadata" and are idempotent by event id: a
-- duplicate returns the stored outcome with replayed true and changes nothing.
--
-- Names: not sp_process_* on purpose, so the seed's "Check if stored procedures exist" query
-- (routine_name LIKE 'sp_process_%') still lists exactly the seed's procedures.
--
-- Lock order: a matched event takes revision 0002's locks (top-up row -> card row). The metadata
-- path locks the event's stripe_events row, then the card row; no other procedure locks a card
-- and then that event's row, so no new deadlock is possible.

CREATE FUNCTION ledger_card_uid_valid(p_card_uid text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_card_uid IS NOT NULL
           AND p_card_uid ~ '^([0-9A-F]{8}|[0-9A-F]{14}|[0-9A-F]{20})$'
$$;

-- A blocked card keeps the reason it already had (e.g. 'lost'): the new one is appended, so an
-- operator who reconciles and unblocks sees every reason.
CREATE FUNCTION ledger_block_reason(p_status text, p_current text, p_reason text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_status <> 'blocked' OR coalesce(p_current, '') = '' THEN left(p_reason, 200)
        WHEN position(p_reason IN p_current) > 0 THEN p_current
        ELSE left(p_current || '; ' || p_reason, 200)
    END
$$;

-- The stored outcome of an event already handled through the card metadata, else NULL.
-- Read without a lock first (a stored outcome never changes once written), then again under the
-- event row's lock by the metadata path.
CREATE FUNCTION ledger_metadata_outcome(p_event_id text, p_lock boolean) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_outcome jsonb;
BEGIN
    IF p_lock THEN
        SELECT outcome INTO v_outcome FROM stripe_events WHERE event_id = p_event_id FOR UPDATE;
    ELSE
        SELECT outcome INTO v_outcome FROM stripe_events WHERE event_id = p_event_id;
    END IF;
    IF v_outcome ->> 'linked_by' = 'card_metadata' THEN
        RETURN v_outcome;
    END IF;
    RETURN NULL;
END
$$;

-- charge.refunded, linked by the payment intent first and the card metadata second.
CREATE FUNCTION sp_handle_stripe_refund(
    p_event_id text, p_payment_intent_id text, p_card_uid text, p_amount_refunded_cents bigint,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_reason constant text := 'refund of an unmatched payment: reconcile';
    v_stored jsonb;
    v_card cards;
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_payment_intent_id IS NULL OR p_amount_refunded_cents IS NULL
       OR p_amount_refunded_cents < 0 THEN
        RAISE EXCEPTION 'a refund needs event id, payment intent and amount_refunded >= 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Already handled through the metadata: the stored outcome, whatever is known now.
    v_stored := ledger_metadata_outcome(p_event_id, false);
    IF v_stored IS NULL AND (
           EXISTS (SELECT 1 FROM topups WHERE payment_intent_id = p_payment_intent_id)
           OR NOT ledger_card_uid_valid(p_card_uid)) THEN
        -- The payment intent links it (or nothing else could): revision 0002, unchanged.
        RETURN sp_process_stripe_refund(p_event_id, p_payment_intent_id,
                                        p_amount_refunded_cents, p_trace_id);
    END IF;

    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    v_stored := ledger_metadata_outcome(p_event_id, true);
    IF v_stored IS NOT NULL THEN
        v_outcome := v_stored || '{"replayed": true}';
        PERFORM ledger_stripe_log(v_started, 'stripe_refund', 'replayed', v_stored ->> 'card_uid',
                                  0, v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;
    SELECT * INTO v_card FROM cards WHERE card_uid = p_card_uid FOR UPDATE;
    IF NOT FOUND THEN
        -- No card to protect: the anomaly of revision 0002.
        RETURN sp_process_stripe_refund(p_event_id, p_payment_intent_id,
                                        p_amount_refunded_cents, p_trace_id);
    END IF;
    UPDATE cards
       SET status = 'blocked',
           blocked_reason = ledger_block_reason(v_card.status, v_card.blocked_reason, v_reason),
           updated_at = v_started
     WHERE card_uid = v_card.card_uid;
    v_outcome := jsonb_build_object(
        'request_id', p_event_id, 'status', 'rejected', 'error_code', 'INVALID_REQUEST',
        'message', 'Unknown payment intent: nothing taken back, card blocked until an operator '
                   || 'reconciles the refund',
        'transaction_id', NULL, 'previous_balance_cents', v_card.balance_cents,
        'new_balance_cents', v_card.balance_cents, 'replayed', false,
        'processed_at_ms', ledger_ms(v_started), 'order_id', NULL,
        'card_uid', v_card.card_uid, 'linked_by', 'card_metadata');
    PERFORM ledger_stripe_log(v_started, 'stripe_refund', 'anomaly', v_card.card_uid,
                              p_amount_refunded_cents, v_outcome, p_event_id,
                              p_payment_intent_id, p_trace_id);
    -- This outcome is the event's, even over one stored by an earlier unmatched delivery.
    UPDATE stripe_events SET outcome = v_outcome WHERE event_id = p_event_id;
    RETURN v_outcome;
END
$$;

-- charge.dispute.*, linked by the payment intent first and the card metadata second.
CREATE FUNCTION sp_handle_stripe_dispute(
    p_event_id text, p_payment_intent_id text, p_card_uid text, p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_reason constant text := 'payment disputed (unmatched payment: reconcile)';
    v_stored jsonb;
    v_card cards;
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL THEN
        RAISE EXCEPTION 'a dispute needs an event id' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_stored := ledger_metadata_outcome(p_event_id, false);
    IF v_stored IS NULL AND (
           EXISTS (SELECT 1 FROM topups WHERE payment_intent_id = p_payment_intent_id)
           OR NOT ledger_card_uid_valid(p_card_uid)) THEN
        RETURN sp_process_stripe_dispute(p_event_id, p_payment_intent_id, p_trace_id);
    END IF;

    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    v_stored := ledger_metadata_outcome(p_event_id, true);
    IF v_stored IS NOT NULL THEN
        v_outcome := v_stored || '{"replayed": true}';
        PERFORM ledger_stripe_log(v_started, 'stripe_dispute', 'replayed',
                                  v_stored ->> 'card_uid', NULL, v_outcome, p_event_id,
                                  p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;
    SELECT * INTO v_card FROM cards WHERE card_uid = p_card_uid FOR UPDATE;
    IF NOT FOUND THEN
        -- A card that does not exist is not created to be blocked: the anomaly of 0002.
        RETURN sp_process_stripe_dispute(p_event_id, p_payment_intent_id, p_trace_id);
    END IF;
    UPDATE cards
       SET status = 'blocked',
           blocked_reason = ledger_block_reason(v_card.status, v_card.blocked_reason, v_reason),
           updated_at = v_started
     WHERE card_uid = v_card.card_uid;
    v_outcome := jsonb_build_object(
        'request_id', p_event_id, 'status', 'approved', 'error_code', NULL,
        'message', 'Card blocked: payment disputed (payment intent unknown, linked by the card '
                   || 'metadata)',
        'transaction_id', NULL, 'previous_balance_cents', v_card.balance_cents,
        'new_balance_cents', v_card.balance_cents, 'replayed', false,
        'processed_at_ms', ledger_ms(v_started), 'order_id', NULL,
        'card_uid', v_card.card_uid, 'linked_by', 'card_metadata');
    PERFORM ledger_stripe_log(v_started, 'stripe_dispute', 'approved', v_card.card_uid, NULL,
                              v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
    UPDATE stripe_events SET outcome = v_outcome WHERE event_id = p_event_id;
    RETURN v_outcome;
END
$$;

-- Privileges, as in revision 0002: no EXECUTE for PUBLIC on anything new; the service role gets
-- the two entry points only (the ledger_* helpers stay the owner's).
REVOKE EXECUTE ON FUNCTION ledger_card_uid_valid(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ledger_block_reason(text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ledger_metadata_outcome(text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_handle_stripe_refund(text, text, text, bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_handle_stripe_dispute(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_handle_stripe_refund(text, text, text, bigint, text)
    TO festival_service;
GRANT EXECUTE ON FUNCTION sp_handle_stripe_dispute(text, text, text, text) TO festival_service;
