-- Revision 0020 down to 0019: r0019's ledger_check() (the shifts' one), the procedures go, the kinds of 0019.
-- Meant for a festival without paid bank transfers (their transactions would break the
-- restored kind check, as 0015's own downgrade is meant for a festival without payouts).
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

DROP FUNCTION sp_payout_mark_paid(uuid[], text);
DROP FUNCTION sp_payout_export(text);
DROP INDEX payouts_request_idx;
DELETE FROM accounts WHERE kind = 'bank';
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return', 'void', 'card_swap', 'cash_variance'));
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit', 'loss',
                    'receivable', 'payout', 'variance'));
