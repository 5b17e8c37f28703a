-- Revision 0022 (cash-out) undone: revision 0021's schema exactly. Cash-outs made are gone with
-- their table; their transactions' kind is no longer allowed, so the downgrade fails while any
-- exists (a ledger's history is not rewritten by a downgrade).
DROP FUNCTION sp_cash_out(text, text, text, text);
-- revision 0016's ledger_process_requests, without cash-outs (before ledger_process_cash_out goes)
CREATE OR REPLACE FUNCTION ledger_process_requests(
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
DROP FUNCTION ledger_process_cash_out(jsonb, boolean);
DROP FUNCTION ledger_cash_out_message(bigint, bigint);
DROP FUNCTION ledger_euros(bigint);

-- revision 0016's ledger_source_function
CREATE OR REPLACE FUNCTION ledger_source_function(p_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_type
        WHEN 'bar_order' THEN 'process-bar-order'
        WHEN 'checkpoint_recharge' THEN 'process-checkpoint-recharge'
        WHEN 'void' THEN 'process-void'
        WHEN 'card_swap' THEN 'process-card-swap'
    END
$$;

-- revision 0016's ledger_check_accounts (before cash_outs goes)
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

DROP TABLE cash_outs;

ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_kind_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_kind_check
    CHECK (kind IN ('bar_order', 'checkpoint_recharge', 'void', 'card_swap'));

ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return', 'void', 'card_swap', 'cash_variance', 'payout_paid'));
