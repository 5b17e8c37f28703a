-- Revision 0020: the bank parts of payouts (DESIGN.md `payout export`, `payout mark-paid`).
--   * sp_payout_export(reference): every `pending` bank part becomes `exported`, atomically,
--     returning exactly the rows it marked (FOR UPDATE SKIP LOCKED: a concurrent export gets
--     the others or nothing, so no part is in two files). The caller writes the SEPA file inside
--     the same database transaction and commits only once the file is on disk.
--   * sp_payout_mark_paid(ids, reference): the `exported` bank parts among `ids` become `paid`;
--     the money leaves the festival: per part one `payout_paid` transaction, `payout:pending`
--     -amount, `bank:festival` +amount (the festival's own bank account, the SEPA file's
--     debtor; + = money out of it, as `stripe:clearing` + is money Stripe gave back). Returns
--     one row per distinct id: `marked` (paid now), else the state it already had (`paid`:
--     an earlier run marked it; `pending`: not exported; `failed`) or `unknown`.
--   * Both audit every change in payout_audit (reason: the file's reference).
--   * ledger_check(): r0019's checks (its shifts exception kept), a `payout_paid` transaction names
--   * An index of payouts by request_id (0015's procedures look a request's parts up by it).
-- (0015 looked a request's parts up by request_id without an index: ledger_payout_summary in
-- every sp_payout_request and sp_payout_fail scanned the whole table, 6 ms a request at 36,000
-- payouts, growing with each.)
CREATE INDEX payouts_request_idx ON payouts (request_id);
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit', 'loss',
                    'receivable', 'payout', 'variance', 'bank'));
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return', 'void', 'card_swap', 'cash_variance', 'payout_paid'));

CREATE FUNCTION sp_payout_export(p_reference text)
RETURNS TABLE (payout_id uuid, request_id uuid, card_uid text, amount_cents bigint, iban text,
               account_holder text, created_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_at timestamptz := clock_timestamp();
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT o.payout_id FROM payouts o
         WHERE o.kind = 'bank' AND o.state = 'pending'
         ORDER BY o.created_at, o.payout_id
           FOR UPDATE SKIP LOCKED
    ), marked AS (
        UPDATE payouts o SET state = 'exported', updated_at = v_at
          FROM picked WHERE o.payout_id = picked.payout_id
        RETURNING o.payout_id, o.request_id, o.card_uid, o.amount_cents, o.iban,
                  o.account_holder, o.created_at
    ), audited AS (
        INSERT INTO payout_audit (payout_id, from_state, to_state, reason, at)
        SELECT m.payout_id, 'pending', 'exported', left('exported: ' || p_reference, 500), v_at
          FROM marked m
    )
    SELECT m.payout_id, m.request_id, m.card_uid, m.amount_cents, m.iban, m.account_holder,
           m.created_at
      FROM marked m
     ORDER BY m.created_at, m.payout_id;
END
$$;

CREATE FUNCTION sp_payout_mark_paid(p_payout_ids uuid[], p_reference text)
RETURNS TABLE (payout_id uuid, outcome text, amount_cents bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    v_at timestamptz := clock_timestamp();
    v_ids uuid[];
    v_amounts bigint[];
    v_txs uuid[];
BEGIN
    -- Lock in one order (two runs of one file wait for each other instead of deadlocking);
    -- a part failed meanwhile is no longer `exported` and is left alone.
    WITH locked AS (
        SELECT o.payout_id FROM payouts o
         WHERE o.payout_id = ANY (p_payout_ids) AND o.kind = 'bank' AND o.state = 'exported'
         ORDER BY o.payout_id
           FOR UPDATE
    ), marked AS (
        UPDATE payouts o SET state = 'paid', updated_at = v_at
          FROM locked WHERE o.payout_id = locked.payout_id
        RETURNING o.payout_id, o.amount_cents
    )
    SELECT coalesce(array_agg(m.payout_id ORDER BY m.payout_id), '{}'),
           coalesce(array_agg(m.amount_cents ORDER BY m.payout_id), '{}')
      INTO v_ids, v_amounts
      FROM marked m;
    IF cardinality(v_ids) > 0 THEN
        v_txs := ARRAY(SELECT ledger_uuid7() FROM unnest(v_ids));
        INSERT INTO payout_audit (payout_id, from_state, to_state, reason, at)
        SELECT u.id, 'exported', 'paid', left('paid: ' || p_reference, 500), v_at
          FROM unnest(v_ids) AS u(id);
        -- The money leaves the festival: payout:pending -amount, bank:festival +amount.
        INSERT INTO transactions (transaction_id, kind, request_id, created_at)
        SELECT u.tx, 'payout_paid', 'payout-paid:' || u.id::text, v_at
          FROM unnest(v_txs, v_ids) AS u(tx, id);
        INSERT INTO postings (transaction_id, account_id, amount_cents, balance_after_cents)
        SELECT u.tx, a.account_id, a.sign * u.amount, NULL
          FROM unnest(v_txs, v_amounts) AS u(tx, amount)
         CROSS JOIN (VALUES (ledger_system_account('payout:pending'), -1),
                            (ledger_system_account('bank:festival'), 1)) AS a(account_id, sign);
    END IF;
    RETURN QUERY
    SELECT i.id,
           CASE WHEN i.id = ANY (v_ids) THEN 'marked'
                ELSE coalesce((SELECT o.state FROM payouts o
                                WHERE o.payout_id = i.id AND o.kind = 'bank'), 'unknown')
           END,
           (SELECT o.amount_cents FROM payouts o WHERE o.payout_id = i.id AND o.kind = 'bank')
      FROM (SELECT DISTINCT unnest(p_payout_ids) AS id) i
     ORDER BY i.id;
END
$$;

REVOKE EXECUTE ON FUNCTION sp_payout_export(text), sp_payout_mark_paid(uuid[], text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_payout_export(text), sp_payout_mark_paid(uuid[], text)
    TO festival_service;

-- festival-cloud check: a paid bank part's transaction names that part (r0019's definition with
-- that exception; the downgrade restores r0019's).
-- It runs without nested loops: the check reads whole tables, and after a bulk of payouts (every
-- one posting on payout:pending and bank:festival) the planner misjudged the postings' groups and
-- nested-looped the cached-balance query over cards x accounts: the whole check took 219 s at
-- 100,000 paid payouts (past the 30 s statement timeout), 4.2 s with hash joins.
CREATE OR REPLACE FUNCTION ledger_check(p_limit integer DEFAULT 20) RETURNS SETOF text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp
SET enable_nestloop = off AS $$
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
       -- a failed part's return names that part, which must have failed; (0020) a paid bank
       -- transfer names that part, which must be paid. Uncorrelated IN lists (one hashed
       -- subplan each): 0015's correlated EXISTS compared every transaction with every payout.
       AND NOT (t.kind = 'payout' AND t.request_id IN (
                    SELECT 'payout:' || o.request_id::text FROM payouts o))
       AND NOT (t.kind = 'payout_return' AND t.request_id IN (
                    SELECT 'payout-fail:' || o.payout_id::text FROM payouts o
                     WHERE o.state = 'failed'))
       AND NOT (t.kind = 'payout_paid' AND t.request_id IN (
                    SELECT 'payout-paid:' || o.payout_id::text FROM payouts o
                     WHERE o.kind = 'bank' AND o.state = 'paid'))
       -- (shifts, 0019) A cash variance names the shift close that booked it, not a kiosk's request.
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
