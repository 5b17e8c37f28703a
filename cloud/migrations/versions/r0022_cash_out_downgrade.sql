-- Revision 0022 (cash-out) undone: revision 0021's schema exactly. Cash-outs made are gone with
-- their table; their transactions' kind is no longer allowed, so the downgrade fails while any
-- exists (a ledger's history is not rewritten by a downgrade).
DROP FUNCTION sp_cash_out(text, text, text, text);
-- revision 0016's ledger_process_requests, without cash-outs (before ledger_process_cash_out goes)
--@restore ledger_process_requests from 0016
DROP FUNCTION ledger_process_cash_out(jsonb, boolean);
DROP FUNCTION ledger_cash_out_message(bigint, bigint);
DROP FUNCTION ledger_euros(bigint);

-- revision 0016's ledger_source_function
--@restore ledger_source_function from 0016

-- revision 0016's ledger_check_accounts (before cash_outs goes)
--@restore ledger_check_accounts from 0016

DROP TABLE cash_outs;

ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_kind_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_kind_check
    CHECK (kind IN ('bar_order', 'checkpoint_recharge', 'void', 'card_swap'));

ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return', 'void', 'card_swap', 'cash_variance', 'payout_paid'));
