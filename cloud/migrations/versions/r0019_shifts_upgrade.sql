-- Revision 0019 (shifts): the cash drawer at the end of a shift (issue 17 §4).
--   * shift_closes: one row per count of a checkpoint's drawer. cash_total_after_cents is the
--     sum of all postings of the checkpoint's account 'cash:<checkpoint>' right after the close
--     (its own variance posting included). A shift's expected cash is the difference of two such
--     cumulative totals, so a top-up that commits while a close runs is in exactly one shift:
--     the close's single sum either saw it (this shift) or did not (the next one).
--   * sp_shift_close: one close per checkpoint at a time (a transaction-scoped advisory lock);
--     a variance (counted - expected) other than 0 is one transaction 'cash_variance' posting
--     'cash:<checkpoint>' -variance and 'variance:cash' +variance (the drawer's account then
--     says what was counted; a shortage leaves 'variance:cash' negative, a surplus positive).
--   * ledger_check: the variance transaction names its shift close ('shift-close:<close_id>').
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit', 'loss',
                    'receivable', 'payout', 'variance'));
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return', 'void', 'card_swap', 'cash_variance'));

CREATE TABLE shift_closes (
    close_id uuid PRIMARY KEY,
    checkpoint_id text NOT NULL
        CHECK (length(checkpoint_id) BETWEEN 1 AND 64 AND checkpoint_id !~ '[[:cntrl:]]'),
    -- 1, 2, ... per checkpoint: the shift this close ended.
    shift_no integer NOT NULL CHECK (shift_no >= 1),
    -- The previous close of the checkpoint (NULL: the first shift, from the first top-up on).
    opened_at timestamptz,
    closed_at timestamptz NOT NULL,
    expected_cents bigint NOT NULL,
    counted_cents bigint NOT NULL CHECK (counted_cents >= 0),
    variance_cents bigint NOT NULL,
    cash_total_after_cents bigint NOT NULL,
    -- The 'cash_variance' transaction (NULL when the count matched).
    transaction_id uuid,
    closed_by text CHECK (length(closed_by) <= 64),
    UNIQUE (checkpoint_id, shift_no),
    CHECK (variance_cents = counted_cents - expected_cents),
    CHECK ((variance_cents = 0) = (transaction_id IS NULL))
);
CREATE INDEX shift_closes_closed_at_idx ON shift_closes (closed_at);
CREATE TRIGGER shift_closes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON shift_closes
    FOR EACH STATEMENT EXECUTE FUNCTION trg_forbid_change();

-- The document of one close (the CLI prints it; the Z-report lists them).
CREATE FUNCTION ledger_shift_close_document(s shift_closes, p_status text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'status', p_status, 'close_id', s.close_id, 'checkpoint_id', s.checkpoint_id,
        'shift_no', s.shift_no,
        'opened_at', to_char(s.opened_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'closed_at', to_char(s.closed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'expected_cents', s.expected_cents, 'counted_cents', s.counted_cents,
        'variance_cents', s.variance_cents, 'transaction_id', s.transaction_id,
        'closed_by', s.closed_by)
$$;

-- Close the shift of a checkpoint: {"status": "closed", "expected_cents", "counted_cents",
-- "variance_cents", ...}, or {"status": "refused", "reason"} for an unknown checkpoint or a
-- negative count. A checkpoint is known when a checkpoint kiosk is registered for it or its cash
-- account exists (it took cash once).
CREATE FUNCTION sp_shift_close(p_checkpoint text, p_counted_cents bigint, p_closed_by text)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_at timestamptz;
    v_previous shift_closes;
    v_account bigint;
    v_total bigint;
    v_expected bigint;
    v_variance bigint;
    v_tx uuid;
    v_close shift_closes;
BEGIN
    IF p_counted_cents IS NULL OR p_counted_cents < 0 THEN
        RETURN jsonb_build_object('status', 'refused',
                                  'reason', 'the counted cash cannot be negative');
    END IF;
    IF p_checkpoint IS NULL OR NOT (
           EXISTS (SELECT 1 FROM kiosks WHERE checkpoint_id = p_checkpoint
                                          AND role IN ('checkpoint', 'all'))
           OR EXISTS (SELECT 1 FROM accounts WHERE name = 'cash:' || p_checkpoint)) THEN
        RETURN jsonb_build_object('status', 'refused',
                                  'reason', format('unknown checkpoint %s', p_checkpoint));
    END IF;
    -- Two closes of one checkpoint at once: one after the other. The statements below start
    -- after the lock is held, so (read committed) they see the other close's row.
    PERFORM pg_advisory_xact_lock(hashtext('festival:shift-close:' || p_checkpoint));
    v_at := clock_timestamp();
    SELECT * INTO v_previous FROM shift_closes WHERE checkpoint_id = p_checkpoint
     ORDER BY shift_no DESC LIMIT 1;
    v_account := ledger_system_account('cash:' || p_checkpoint);
    -- One statement, one snapshot: every top-up this sum sees is in this shift, every other one
    -- in the next (cash in is negative on the drawer's account, cash paid out positive).
    SELECT coalesce(sum(amount_cents), 0) INTO v_total FROM postings WHERE account_id = v_account;
    v_expected := coalesce(v_previous.cash_total_after_cents, 0) - v_total;
    v_variance := p_counted_cents - v_expected;
    IF v_variance <> 0 THEN
        v_tx := ledger_uuid7();
    END IF;
    INSERT INTO shift_closes (close_id, checkpoint_id, shift_no, opened_at, closed_at,
                              expected_cents, counted_cents, variance_cents,
                              cash_total_after_cents, transaction_id, closed_by)
    VALUES (ledger_uuid7(), p_checkpoint, coalesce(v_previous.shift_no, 0) + 1,
            v_previous.closed_at, v_at, v_expected, p_counted_cents, v_variance,
            v_total - v_variance, v_tx, left(p_closed_by, 64))
    RETURNING * INTO v_close;
    IF v_variance <> 0 THEN
        INSERT INTO transactions (transaction_id, kind, request_id, created_at)
        VALUES (v_tx, 'cash_variance', 'shift-close:' || v_close.close_id::text, v_at);
        INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
        VALUES (v_tx, v_account, -v_variance, NULL),
               (v_tx, ledger_system_account('variance:cash'), v_variance, NULL);
    END IF;
    RETURN ledger_shift_close_document(v_close, 'closed');
END
$$;

REVOKE EXECUTE ON FUNCTION sp_shift_close(text, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_shift_close(text, bigint, text) TO festival_service;
REVOKE EXECUTE ON FUNCTION ledger_shift_close_document(shift_closes, text) FROM PUBLIC;
GRANT SELECT ON shift_closes TO festival_service, festival_api;

-- festival-cloud check: r0015's definition with the one (shifts) exception added; the downgrade
-- restores r0015's.
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
       -- (shifts) A cash variance names the shift close that booked it, not a kiosk's request.
       AND NOT (t.kind = 'cash_variance' AND EXISTS (
                    SELECT 1 FROM shift_closes s WHERE s.transaction_id = t.transaction_id
                       AND 'shift-close:' || s.close_id::text = t.request_id))
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

