-- Revision 0019 (shifts) undone: r0015's ledger_check, as it was; the shift closes and the
-- kinds 'variance' and 'cash_variance' go. Like r0015's downgrade, the ledger is not rewritten:
-- a database holding 'cash_variance' transactions refuses the downgrade (0015's kind list).
--@restore ledger_check from 0015

DROP FUNCTION sp_shift_close(text, bigint, text);
DROP FUNCTION ledger_shift_close_document(shift_closes, text);
DROP TABLE shift_closes;
DELETE FROM accounts WHERE kind = 'variance';
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return', 'void', 'card_swap'));
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit', 'loss',
                    'receivable', 'payout'));
