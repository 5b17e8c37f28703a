--@restore ledger_check from 0002

DROP FUNCTION sp_payout_fail(uuid, text);
DROP FUNCTION sp_payout_request(text, text, text, bigint, bigint, text);
DROP FUNCTION ledger_payout_summary(uuid, text);
DROP FUNCTION ledger_payout_add(uuid, cards, text, bigint, text, text, text, text, text, text,
                                timestamptz);
DROP TABLE payout_audit;
DROP TABLE payouts;
DELETE FROM accounts WHERE kind = 'payout';
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund'));
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit', 'loss',
                    'receivable'));
