-- Revision 0006: Stripe credits only the Checkout Sessions this API created (DESIGN.md 1.1).
--
--   * sp_handle_stripe_checkout is the webhook's entry point for a paid session from this revision
--     on (sp_process_stripe_recharge stays, the seed's procedure, but the webhook no longer calls
--     it): metadata.topup_id must name a top-up made by /api/topups/checkout whose card UID, amount
--     and currency equal the session's; anything else is an anomaly (recorded, never credited,
--     never refunded: it may be another shop's order on the same Stripe account).
--   * A matched, paid session that cannot be credited (card blocked, maximum balance exceeded, a
--     currency the festival no longer takes) is declined and a full refund is recorded as OWED in
--     topup_refunds, in the same transaction; the API then calls POST /v1/refunds with the
--     session's idempotency key (refund-session-<session id>) and records the result. What is
--     still owed is retried (sp_claim_topup_refunds / sp_finish_topup_refund) by the next webhook
--     of the process that failed, and by every `festival-cloud cleanup`.
--   * charge.dispute.closed: a lost dispute takes the disputed amount (at most what is credited and
--     not yet reversed) back off the card, as far as its balance covers it, and books the rest to
--     the loss account 'loss:disputes'. Recorded once per dispute id (stripe_disputes).
--   * Unpaid top-ups expire: topups.expires_at (24 h after creation), status 'expired' (cleanup and
--     checkout.session.expired); a later payment of an expired top-up is still credited or
--     refunded. Expired/failed rows that never held money are deleted after a retention.
--   * sp_record_stripe_note: the reason an event was ignored or is an anomaly, on its
--     stripe_events row (anomalies also in app_transaction_log): nothing is ignored silently.
--
-- Lock order, as in revision 0002: top-up row -> card row. The dispute path locks the top-up, the
-- stripe_disputes row, then the card; the refund queue locks only topup_refunds rows.

-- ---------------------------------------------------------------------------------------------
-- Accounts: the loss account kind. Every CHECK on accounts.kind alone is replaced (revision 0005
-- may have changed the list).
DO $$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN
        SELECT c.conname FROM pg_constraint c
         WHERE c.conrelid = 'accounts'::regclass AND c.contype = 'c'
           AND c.conkey = ARRAY[(SELECT attnum FROM pg_attribute
                                  WHERE attrelid = 'accounts'::regclass
                                    AND attname = 'kind')]::smallint[]
    LOOP
        EXECUTE format('ALTER TABLE accounts DROP CONSTRAINT %I', v_name);
    END LOOP;
END
$$;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind IN (
    'card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit', 'loss'));

-- ---------------------------------------------------------------------------------------------
-- Top-ups: expiry, the part lost to disputes.
ALTER TABLE topups ADD COLUMN expires_at timestamptz;
UPDATE topups SET expires_at = created_at + interval '24 hours';
ALTER TABLE topups ALTER COLUMN expires_at SET DEFAULT now() + interval '24 hours',
                   ALTER COLUMN expires_at SET NOT NULL;
ALTER TABLE topups ADD COLUMN lost_cents bigint NOT NULL DEFAULT 0 CHECK (lost_cents >= 0);
ALTER TABLE topups DROP CONSTRAINT topups_status_check;
-- expired: never paid within 24 h (still credited or refunded if Stripe confirms it later)
ALTER TABLE topups ADD CONSTRAINT topups_status_check CHECK (status IN (
    'pending', 'open', 'credited', 'failed', 'declined', 'anomaly', 'expired'));
CREATE INDEX topups_expiry_idx ON topups (expires_at) WHERE status IN ('pending', 'open');

-- A full refund the API owes for a declined paid session: recorded before Stripe is called.
CREATE TABLE topup_refunds (
    topup_id text PRIMARY KEY,
    session_id text NOT NULL UNIQUE,
    payment_intent_id text,
    card_uid text NOT NULL,
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    currency text NOT NULL,
    reason text NOT NULL CHECK (length(reason) <= 200),
    idempotency_key text NOT NULL UNIQUE CHECK (length(idempotency_key) <= 255),
    -- owed: to call (again); succeeded: Stripe accepted it; failed: Stripe refused it for good
    -- (a human looks at last_error)
    status text NOT NULL DEFAULT 'owed' CHECK (status IN ('owed', 'succeeded', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    -- the backoff: a due-only sweep takes it from then on
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- an attempt in progress: nobody else takes it before then
    leased_until timestamptz,
    refund_id text CHECK (length(refund_id) <= 255),
    last_error text CHECK (length(last_error) <= 500),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX topup_refunds_owed_idx ON topup_refunds (next_attempt_at) WHERE status = 'owed';

-- One row per dispute we were told the end of.
CREATE TABLE stripe_disputes (
    dispute_id text PRIMARY KEY CHECK (length(dispute_id) <= 255),
    payment_intent_id text,
    topup_id text,
    status text NOT NULL CHECK (length(status) <= 64),
    amount_cents bigint NOT NULL CHECK (amount_cents >= 0),
    lost_cents bigint NOT NULL DEFAULT 0 CHECK (lost_cents >= 0),
    transaction_id uuid,
    outcome jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT ON topup_refunds, stripe_disputes TO festival_service, festival_api;

-- ---------------------------------------------------------------------------------------------
-- Helpers

-- An anomaly outcome for a Stripe event: logged, stored on the event (first outcome kept).
CREATE FUNCTION ledger_stripe_anomaly(
    p_started timestamptz, p_type text, p_event_id text, p_key text, p_card_uid text,
    p_amount_cents bigint, p_message text, p_trace_id text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_outcome jsonb;
BEGIN
    v_outcome := jsonb_build_object(
        'request_id', coalesce(p_key, p_event_id), 'status', 'rejected',
        'error_code', 'INVALID_REQUEST', 'message', left(p_message, 300),
        'transaction_id', NULL, 'previous_balance_cents', NULL, 'new_balance_cents', NULL,
        'replayed', false, 'processed_at_ms', ledger_ms(p_started), 'order_id', NULL,
        'card_uid', NULL, 'anomaly', true);
    PERFORM ledger_stripe_log(p_started, p_type, 'anomaly', p_card_uid, p_amount_cents,
                              v_outcome, p_event_id, p_key, p_trace_id);
    RETURN v_outcome;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- A paid Checkout Session (checkout.session.completed with payment_status paid, or
-- checkout.session.async_payment_succeeded). p_card_uid is the session's metadata.card_uid (NULL
-- when absent or invalid), never its client_reference_id.
CREATE FUNCTION sp_handle_stripe_checkout(
    p_event_id text,
    p_session_id text,
    p_topup_id text,
    p_card_uid text,
    p_amount_cents bigint,
    p_currency text,
    p_payment_intent_id text DEFAULT NULL,
    p_expected_currency text DEFAULT 'EUR',
    p_balance_cents_max bigint DEFAULT 150000,
    p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_topup topups;
    v_card cards;
    v_tx uuid;
    v_code text;
    v_status text;
    v_previous bigint;
    v_new bigint;
    v_message text;
    v_reason text;
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_session_id IS NULL OR p_amount_cents IS NULL
       OR p_amount_cents < 0 OR p_currency IS NULL THEN
        RAISE EXCEPTION 'a Stripe checkout needs event id, session id, amount >= 0 and currency'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;

    IF p_topup_id IS NULL THEN
        RETURN ledger_stripe_anomaly(v_started, 'stripe_recharge', p_event_id, p_session_id,
            p_card_uid, p_amount_cents,
            'Not a session this API created (no metadata.topup_id): not credited', p_trace_id);
    END IF;
    SELECT * INTO v_topup FROM topups WHERE topup_id = p_topup_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_stripe_anomaly(v_started, 'stripe_recharge', p_event_id, p_session_id,
            p_card_uid, p_amount_cents,
            'Not a session this API created (unknown metadata.topup_id): not credited',
            p_trace_id);
    END IF;
    IF v_topup.session_id IS NOT NULL AND v_topup.session_id <> p_session_id THEN
        v_reason := 'the top-up belongs to another Checkout Session';
    ELSIF p_card_uid IS DISTINCT FROM v_topup.card_uid THEN
        v_reason := 'metadata.card_uid differs from the top-up''s card';
    ELSIF p_amount_cents <> v_topup.amount_cents THEN
        v_reason := format('amount_total %s differs from the top-up''s %s', p_amount_cents,
                           v_topup.amount_cents);
    ELSIF upper(p_currency) <> v_topup.currency THEN
        v_reason := format('currency %s differs from the top-up''s %s', upper(left(p_currency, 3)),
                           v_topup.currency);
    END IF;
    IF v_reason IS NOT NULL THEN
        RETURN ledger_stripe_anomaly(v_started, 'stripe_recharge', p_event_id, p_session_id,
            p_card_uid, p_amount_cents,
            format('Session does not match top-up %s (%s): not credited', v_topup.topup_id,
                   v_reason), p_trace_id);
    END IF;

    -- Ours. Once decided (credited or declined), the same outcome forever.
    IF v_topup.status IN ('credited', 'declined', 'anomaly') THEN
        v_outcome := v_topup.outcome || '{"replayed": true}';
        PERFORM ledger_stripe_log(v_started, 'stripe_recharge', 'replayed', v_topup.card_uid,
                                  p_amount_cents, v_outcome, p_event_id, p_session_id,
                                  p_trace_id);
        RETURN v_outcome;
    END IF;

    -- pending, open, expired (paid late: still credited or refunded) or failed.
    v_card := ledger_open_card(v_topup.card_uid);
    v_previous := v_card.balance_cents;
    v_new := v_previous;
    IF v_topup.currency <> upper(p_expected_currency) THEN
        v_status := 'declined';
        v_code := 'INVALID_REQUEST';
        v_reason := format('paid in %s, not %s', v_topup.currency, upper(p_expected_currency));
    ELSIF v_card.status = 'blocked' THEN
        v_status := 'declined';
        v_code := 'CARD_BLOCKED';
        v_reason := 'card blocked';
    ELSIF v_previous + p_amount_cents > p_balance_cents_max THEN
        v_status := 'declined';
        v_code := 'BALANCE_LIMIT_EXCEEDED';
        v_reason := 'maximum balance exceeded';
    ELSIF p_amount_cents = 0 THEN
        v_status := 'declined';
        v_code := 'INVALID_REQUEST';
        v_reason := 'nothing paid';
    ELSE
        v_status := 'approved';
        v_message := 'Topped up';
        v_tx := ledger_uuid7();
        v_new := v_previous + p_amount_cents;
        UPDATE cards SET balance_cents = v_new, updated_at = v_started
         WHERE card_uid = v_card.card_uid;
        INSERT INTO transactions (transaction_id, kind, stripe_event_id, topup_id, created_at)
        VALUES (v_tx, 'stripe_recharge', p_event_id, v_topup.topup_id, v_started);
        INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
        VALUES (v_tx, v_card.account_id, p_amount_cents, v_new),
               (v_tx, ledger_system_account('stripe:clearing'), -p_amount_cents, NULL);
        INSERT INTO recharges (
            recharge_id, transaction_id, card_id, amount_cents, payment_method,
            stripe_session_id, stripe_payment_intent_id, source, created_at)
        VALUES (ledger_uuid7(), v_tx, v_card.card_uid, p_amount_cents, 'stripe', p_session_id,
                p_payment_intent_id, 'stripe', v_started);
    END IF;

    IF v_status = 'declined' AND p_amount_cents > 0 THEN
        v_message := format('Not credited (%s): refunded in full', v_reason);
        INSERT INTO topup_refunds (
            topup_id, session_id, payment_intent_id, card_uid, amount_cents, currency, reason,
            idempotency_key, status, last_error)
        VALUES (v_topup.topup_id, p_session_id, p_payment_intent_id, v_topup.card_uid,
                p_amount_cents, v_topup.currency, v_reason, 'refund-session-' || p_session_id,
                CASE WHEN p_payment_intent_id IS NULL THEN 'failed' ELSE 'owed' END,
                CASE WHEN p_payment_intent_id IS NULL
                     THEN 'the session has no payment_intent to refund: refund it by hand' END)
        ON CONFLICT DO NOTHING;
    ELSIF v_status = 'declined' THEN
        v_message := format('Not credited (%s)', v_reason);
    END IF;

    v_outcome := jsonb_build_object(
        'request_id', p_session_id, 'status', v_status, 'error_code', v_code,
        'message', v_message, 'transaction_id', v_tx, 'previous_balance_cents', v_previous,
        'new_balance_cents', v_new, 'replayed', false,
        'processed_at_ms', ledger_ms(v_started), 'order_id', NULL,
        'card_uid', v_card.card_uid, 'topup_id', v_topup.topup_id,
        'refund', CASE WHEN v_status = 'declined' AND p_amount_cents > 0 THEN 'owed' END);
    UPDATE topups
       SET status = CASE WHEN v_status = 'approved' THEN 'credited' ELSE 'declined' END,
           session_id = p_session_id, outcome = v_outcome, transaction_id = v_tx,
           credited_cents = CASE WHEN v_tx IS NULL THEN 0 ELSE p_amount_cents END,
           payment_intent_id = coalesce(p_payment_intent_id, payment_intent_id),
           updated_at = v_started
     WHERE topup_id = v_topup.topup_id;
    INSERT INTO idempotency_keys (
        request_id, source_function, status, response_payload, created_at, updated_at,
        expires_at)
    VALUES ('stripe:' || p_session_id, 'stripe-webhook', v_status, v_outcome, v_started,
            clock_timestamp(), v_started + interval '24 hours')
    ON CONFLICT (request_id) DO NOTHING;
    PERFORM ledger_stripe_log(v_started, 'stripe_recharge', v_status, v_card.card_uid,
                              p_amount_cents, v_outcome, p_event_id, p_session_id, p_trace_id);
    RETURN v_outcome;
END
$$;

-- The reason an event changes nothing ('ignored') or cannot be acted on ('anomaly'), on its
-- stripe_events row; anomalies also get an audit row. Returns false when the event already had
-- an outcome (a duplicate).
CREATE FUNCTION sp_record_stripe_note(
    p_event_id text, p_disposition text, p_reason text, p_trace_id text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_disposition NOT IN ('ignored', 'anomaly') THEN
        RAISE EXCEPTION 'a note needs an event id and ignored|anomaly'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    IF EXISTS (SELECT 1 FROM stripe_events WHERE event_id = p_event_id AND outcome IS NOT NULL)
    THEN
        RETURN false;
    END IF;
    IF p_disposition = 'anomaly' THEN
        PERFORM ledger_stripe_anomaly(v_started, 'stripe_event', p_event_id, NULL, NULL, NULL,
                                      p_reason, p_trace_id);
    ELSE
        v_outcome := jsonb_build_object('status', 'ignored', 'message', left(p_reason, 300),
                                        'processed_at_ms', ledger_ms(v_started));
        UPDATE stripe_events SET processed_at = coalesce(processed_at, now()),
                                 outcome = coalesce(outcome, v_outcome)
         WHERE event_id = p_event_id;
    END IF;
    RETURN true;
END
$$;

-- checkout.session.expired: the attendee never paid; the top-up will not be credited (unless
-- Stripe confirms a payment later after all, which sp_handle_stripe_checkout still takes).
CREATE FUNCTION sp_expire_checkout_session(p_session_id text, p_event_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_changed boolean;
BEGIN
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    UPDATE topups SET status = 'expired', updated_at = now()
     WHERE session_id = p_session_id AND status IN ('pending', 'open');
    v_changed := FOUND;
    UPDATE stripe_events
       SET processed_at = coalesce(processed_at, now()),
           outcome = coalesce(outcome, jsonb_build_object(
               'status', 'processed',
               'message', CASE WHEN v_changed THEN 'top-up expired'
                               ELSE 'no open top-up for this session' END))
     WHERE event_id = p_event_id;
    RETURN v_changed;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- The refund queue.

-- Take up to p_limit owed refunds (only p_topup_id's when given; only those past their backoff
-- when p_due_only) that no one is attempting, and lease them for p_lease_s seconds, so that two
-- processes do not call Stripe for the same one at once (were they to, the idempotency key makes
-- the second call return the first refund).
CREATE FUNCTION sp_claim_topup_refunds(
    p_limit integer, p_topup_id text DEFAULT NULL, p_due_only boolean DEFAULT true,
    p_lease_s integer DEFAULT 60)
RETURNS TABLE (topup_id text, session_id text, payment_intent_id text, card_uid text,
               amount_cents bigint, currency text, idempotency_key text, attempts integer)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    RETURN QUERY
    UPDATE topup_refunds r
       SET attempts = r.attempts + 1,
           leased_until = now() + make_interval(secs => greatest(p_lease_s, 1)),
           updated_at = now()
     WHERE r.topup_id IN (
           SELECT o.topup_id FROM topup_refunds o
            WHERE o.status = 'owed'
              AND (o.leased_until IS NULL OR o.leased_until <= now())
              AND (p_topup_id IS NULL OR o.topup_id = p_topup_id)
              AND (NOT p_due_only OR o.next_attempt_at <= now())
            ORDER BY o.next_attempt_at
            LIMIT greatest(p_limit, 0)
              FOR UPDATE SKIP LOCKED)
    RETURNING r.topup_id, r.session_id, r.payment_intent_id, r.card_uid, r.amount_cents,
              r.currency, r.idempotency_key, r.attempts;
END
$$;

-- What Stripe answered: 'succeeded' (p_refund_id), 'failed' for good (p_error), or 'retry'
-- (p_error; owed again after p_retry_after_s).
CREATE FUNCTION sp_finish_topup_refund(
    p_topup_id text, p_result text, p_refund_id text DEFAULT NULL, p_error text DEFAULT NULL,
    p_retry_after_s integer DEFAULT 60)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_refund topup_refunds;
BEGIN
    IF p_result NOT IN ('succeeded', 'failed', 'retry') THEN
        RAISE EXCEPTION 'result must be succeeded, failed or retry'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE topup_refunds
       SET status = CASE p_result WHEN 'retry' THEN 'owed' ELSE p_result END,
           refund_id = coalesce(left(p_refund_id, 255), refund_id),
           last_error = CASE WHEN p_result = 'succeeded' THEN NULL ELSE left(p_error, 500) END,
           next_attempt_at = CASE WHEN p_result = 'retry'
                                  THEN now() + make_interval(secs => greatest(p_retry_after_s, 0))
                                  ELSE next_attempt_at END,
           leased_until = NULL,
           updated_at = v_started
     WHERE topup_id = p_topup_id AND status = 'owed'
    RETURNING * INTO v_refund;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO app_transaction_log (
        card_id, transaction_type, status, amount_cents, error_code, details,
        edge_function_name, client_request_id, "timestamp", created_at, updated_at)
    VALUES (v_refund.card_uid, 'stripe_refund_request',
            CASE p_result WHEN 'succeeded' THEN 'approved' WHEN 'failed' THEN 'anomaly'
                          ELSE 'retry' END,
            v_refund.amount_cents, NULL,
            jsonb_build_object('topup_id', v_refund.topup_id, 'refund_id', p_refund_id,
                               'reason', v_refund.reason, 'attempts', v_refund.attempts,
                               'error', left(p_error, 500)),
            'stripe-refund', v_refund.idempotency_key, v_started, v_started, clock_timestamp());
    RETURN true;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- charge.dispute.closed. Only 'lost' moves money: the disputed amount, at most what the top-up
-- credited and has not had reversed yet (refunds, earlier lost disputes), leaves the card as far
-- as its balance covers it; the rest is booked to 'loss:disputes'. charge.dispute.created already
-- blocked the card and took nothing, so nothing is counted twice. Other statuses (won,
-- warning_closed, ...) are recorded; the card stays blocked until an operator unblocks it.
CREATE FUNCTION sp_handle_stripe_dispute_closed(
    p_event_id text, p_dispute_id text, p_payment_intent_id text, p_status text,
    p_amount_cents bigint, p_trace_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_started timestamptz := clock_timestamp();
    v_topup topups;
    v_dispute stripe_disputes;
    v_card cards;
    v_delta bigint;
    v_take bigint;
    v_loss bigint;
    v_new bigint;
    v_tx uuid;
    v_message text;
    v_outcome jsonb;
BEGIN
    IF p_event_id IS NULL OR p_dispute_id IS NULL OR p_status IS NULL
       OR p_amount_cents IS NULL OR p_amount_cents < 0 THEN
        RAISE EXCEPTION 'a closed dispute needs event id, dispute id, status and amount >= 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO stripe_events (event_id) VALUES (p_event_id) ON CONFLICT DO NOTHING;
    SELECT * INTO v_topup FROM topups WHERE payment_intent_id = p_payment_intent_id
     ORDER BY created_at LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_stripe_anomaly(v_started, 'stripe_dispute', p_event_id,
            p_payment_intent_id, NULL, p_amount_cents,
            format('Dispute %s closed (%s) for an unknown payment intent: nothing booked',
                   left(p_dispute_id, 64), left(p_status, 32)), p_trace_id);
    END IF;
    INSERT INTO stripe_disputes (dispute_id, payment_intent_id, topup_id, status, amount_cents)
    VALUES (p_dispute_id, p_payment_intent_id, v_topup.topup_id, p_status, p_amount_cents)
    ON CONFLICT (dispute_id) DO NOTHING;
    SELECT * INTO STRICT v_dispute FROM stripe_disputes WHERE dispute_id = p_dispute_id
       FOR UPDATE;
    IF v_dispute.outcome IS NOT NULL THEN
        v_outcome := v_dispute.outcome || '{"replayed": true}';
        PERFORM ledger_stripe_log(v_started, 'stripe_dispute', 'replayed', v_topup.card_uid,
                                  NULL, v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
        RETURN v_outcome;
    END IF;
    v_card := ledger_open_card(v_topup.card_uid);
    v_new := v_card.balance_cents;
    v_delta := 0;
    IF p_status = 'lost' THEN
        v_delta := greatest(0, least(p_amount_cents, v_topup.credited_cents
                                     - v_topup.refunded_cents - v_topup.lost_cents));
    END IF;
    IF v_delta > 0 THEN
        v_take := least(v_delta, v_card.balance_cents);
        v_loss := v_delta - v_take;
        v_new := v_card.balance_cents - v_take;
        v_tx := ledger_uuid7();
        UPDATE cards
           SET balance_cents = v_new, status = 'blocked',
               blocked_reason = ledger_block_reason(v_card.status, v_card.blocked_reason,
                                                    'payment disputed: lost'),
               updated_at = v_started
         WHERE card_uid = v_card.card_uid;
        INSERT INTO transactions (transaction_id, kind, stripe_event_id, topup_id, created_at)
        VALUES (v_tx, 'stripe_refund', p_event_id, v_topup.topup_id, v_started);
        INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
        SELECT * FROM (VALUES
            (v_tx, v_card.account_id, -v_take, v_new),
            (v_tx, ledger_system_account('stripe:clearing'), v_delta, NULL::bigint),
            (v_tx, ledger_system_account('loss:disputes'), -v_loss, NULL::bigint)) p
         WHERE p.column3 <> 0 OR p.column2 = v_card.account_id;
        UPDATE topups SET lost_cents = lost_cents + v_delta, updated_at = v_started
         WHERE topup_id = v_topup.topup_id;
        v_message := format('Dispute lost: %s cents reversed, %s taken off the card, %s booked '
                            || 'to loss:disputes', v_delta, v_take, v_loss);
    ELSIF p_status = 'lost' THEN
        v_message := 'Dispute lost: nothing credited is left to reverse';
    ELSE
        v_message := format('Dispute closed (%s): no money moved; the card stays blocked until '
                            || 'an operator unblocks it', left(p_status, 32));
    END IF;
    v_outcome := jsonb_build_object(
        'request_id', p_event_id, 'status', 'approved', 'error_code', NULL,
        'message', v_message, 'transaction_id', v_tx,
        'previous_balance_cents', v_card.balance_cents, 'new_balance_cents', v_new,
        'replayed', false, 'processed_at_ms', ledger_ms(v_started), 'order_id', NULL,
        'card_uid', v_card.card_uid);
    UPDATE stripe_disputes
       SET status = p_status, lost_cents = v_delta, transaction_id = v_tx, outcome = v_outcome,
           updated_at = v_started
     WHERE dispute_id = p_dispute_id;
    PERFORM ledger_stripe_log(v_started, 'stripe_dispute', 'approved', v_card.card_uid,
                              v_delta, v_outcome, p_event_id, p_payment_intent_id, p_trace_id);
    RETURN v_outcome;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Maintenance: expire unpaid top-ups; delete expired and failed ones that never held money once
-- they are older than the retention. Returns {"expired": n, "deleted": n}.
CREATE FUNCTION sp_cleanup_topups(p_retention_days integer DEFAULT 30) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_expired integer;
    v_deleted integer;
BEGIN
    IF p_retention_days IS NULL OR p_retention_days < 1 THEN
        RAISE EXCEPTION 'the retention is at least one day'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE topups SET status = 'expired', updated_at = now()
     WHERE status IN ('pending', 'open') AND expires_at <= now() AND credited_cents = 0;
    GET DIAGNOSTICS v_expired = ROW_COUNT;
    DELETE FROM topups u
     WHERE u.status IN ('expired', 'failed')
       AND u.expires_at <= now() - make_interval(days => p_retention_days)
       AND u.updated_at <= now() - make_interval(days => p_retention_days)
       AND u.credited_cents = 0 AND u.refunded_cents = 0 AND u.lost_cents = 0
       AND u.shortfall_cents = 0 AND u.transaction_id IS NULL AND u.payment_intent_id IS NULL
       AND NOT EXISTS (SELECT 1 FROM topup_refunds r WHERE r.topup_id = u.topup_id)
       AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.topup_id = u.topup_id);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN jsonb_build_object('expired', v_expired, 'deleted', v_deleted);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC; the entry points for both service roles (the API connects as
-- festival_api from revision 0007 on; the tests and the consumer as festival_service).
REVOKE EXECUTE ON FUNCTION ledger_stripe_anomaly(timestamptz, text, text, text, text, bigint,
                                                 text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_handle_stripe_checkout(text, text, text, text, bigint, text, text,
                                                     text, bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_record_stripe_note(text, text, text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_expire_checkout_session(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_claim_topup_refunds(integer, text, boolean, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_finish_topup_refund(text, text, text, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_handle_stripe_dispute_closed(text, text, text, text, bigint, text)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_cleanup_topups(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_handle_stripe_checkout(text, text, text, text, bigint, text, text,
                                                    text, bigint, text)
    TO festival_service, festival_api;
GRANT EXECUTE ON FUNCTION sp_record_stripe_note(text, text, text, text)
    TO festival_service, festival_api;
GRANT EXECUTE ON FUNCTION sp_expire_checkout_session(text, text)
    TO festival_service, festival_api;
GRANT EXECUTE ON FUNCTION sp_claim_topup_refunds(integer, text, boolean, integer)
    TO festival_service, festival_api;
GRANT EXECUTE ON FUNCTION sp_finish_topup_refund(text, text, text, text, integer)
    TO festival_service, festival_api;
GRANT EXECUTE ON FUNCTION sp_handle_stripe_dispute_closed(text, text, text, text, bigint, text)
    TO festival_service, festival_api;
-- cleanup is the operator's (festival-cloud cleanup), not the API's.
GRANT EXECUTE ON FUNCTION sp_cleanup_topups(integer) TO festival_service;
