-- Revision 0021 down to 0020: ledger_process_plain_requests gets 0014's text back (as 0016
-- renamed it), ledger_write_requests 0016's, offline_sales loses loss_cents. Refused once a sale
-- was charged to the loss account: 0020 cannot express it (the ledger is append-only).

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM offline_sales WHERE loss_cents > 0) THEN
        RAISE EXCEPTION 'offline sales were charged to the loss account: revision 0020 cannot express them'
            USING ERRCODE = 'object_in_use';
    END IF;
END
$$;

--@restore ledger_process_requests from 0014 as ledger_process_plain_requests


--@restore ledger_write_requests from 0016


--@restore ledger_decide_void from 0016

ALTER TABLE offline_sales
    DROP CONSTRAINT offline_sales_shortfall_and_loss_within_total,
    DROP COLUMN loss_cents;
