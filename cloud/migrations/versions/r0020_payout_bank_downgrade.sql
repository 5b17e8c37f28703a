-- Revision 0020 down to 0019: r0019's ledger_check() (the shifts' one), the procedures go, the kinds of 0019.
-- Meant for a festival without paid bank transfers (their transactions would break the
-- restored kind check, as 0015's own downgrade is meant for a festival without payouts).
--@restore ledger_check from 0019

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
