-- Revision 0013 down: offline sales and debts removed; revision 0011's procedures back (0012,
-- the portal, changed none of them).
-- Refused while any card has a debt or any offline sale was applied: 0012 cannot represent
-- them (the postings are append-only, so the receivable accounts could not be dropped).

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM offline_sales)
       OR EXISTS (SELECT 1 FROM accounts WHERE kind = 'receivable') THEN
        RAISE EXCEPTION 'revision 0013 cannot be downgraded: offline sales or debts exist'
            USING ERRCODE = 'object_in_use';
    END IF;
END
$$;

DROP FUNCTION ledger_decide_request(ledger_request, text, bigint, bigint, bigint, bigint, bigint,
                                    text, text);
DROP FUNCTION ledger_write_requests(jsonb, ledger_decided[], text[], bigint[], bigint[],
                                    boolean[], bigint, bigint, timestamptz);
ALTER TYPE ledger_decided DROP ATTRIBUTE debt_delta_cents;
ALTER TYPE ledger_request DROP ATTRIBUTE offline;

--@restore ledger_decide_request from 0011

--@restore ledger_write_requests from 0011

--@restore ledger_process_requests from 0011

--@restore ledger_credit_from_stripe from 0009

--@restore sp_issue_denylist from 0010


--@restore ledger_check_accounts from 0005

DROP TRIGGER cards_denylist_debt_changed ON cards;
DROP TABLE offline_sales;
DROP INDEX cards_with_debt;
ALTER TABLE cards DROP CONSTRAINT cards_balance_or_debt, DROP COLUMN debt_cents;
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall', 'deposit', 'loss'));

REVOKE EXECUTE ON FUNCTION
    ledger_decide_request(ledger_request, text, bigint, bigint, bigint, bigint, bigint, text),
    ledger_write_requests(jsonb, ledger_decided[], text[], bigint[], boolean[], bigint, bigint,
                          timestamptz)
FROM PUBLIC;
