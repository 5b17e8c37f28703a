-- Revision 0005 rolled back: the deposit account, the kiosks' checkpoints and the dead-letter
-- bounds go; revision 0002's procedures come back exactly (copied below) with their grants.
--
-- The deposit account and its postings stay (the ledger is append-only and no money may be
-- stranded): revision 0004 knows no kind 'deposit', so the account becomes the system account
-- 'sales:deposit:cups' (no kiosk id contains ':', so no bar can own that name), which 0004 never
-- posts to; upgrading to 0005 again turns it back into 'deposit:cups' with its balance.
-- Dead letters keep the payload bytes they have (at most 8192 of each); their full lengths and
-- hashes go with the columns.

-- 1. Bar orders and top-ups: revision 0002's procedures, verbatim.
DROP INDEX bar_orders_created_at_brin;
DROP FUNCTION ledger_check_accounts(integer);
DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint);
DROP FUNCTION sp_process_bar_order(
    text, text, jsonb, bigint, text, text, bigint, text, text, text, bigint, bigint);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint);
DROP FUNCTION ledger_amount_text(bigint);

--@restore ledger_process_requests from 0002

--@restore sp_process_batch from 0002

-- One bar order (the seed's procedure name). p_items: [{name, quantity, unit_price_cents, sku,
-- is_deposit, is_return}]; p_total_cents may be negative (returns only): then the card is credited.
--@restore sp_process_bar_order from 0002

-- One cash or card top-up at a checkpoint (the seed's procedure name). An unknown card is created.
--@restore sp_process_checkpoint_recharge from 0002

REVOKE EXECUTE ON FUNCTION ledger_process_requests(jsonb, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION sp_process_bar_order(
    text, text, jsonb, bigint, text, text, bigint, text, text, text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint) TO festival_service;
GRANT EXECUTE ON FUNCTION sp_process_bar_order(
    text, text, jsonb, bigint, text, text, bigint, text, text, text, bigint)
    TO festival_service;

-- 7. Dead letters: revision 0002's entry point, unbounded again.
DROP FUNCTION cleanup_expired_dead_letters();
DROP FUNCTION sp_record_dead_letters(jsonb, integer);
--@restore sp_record_dead_letter from 0002

DROP FUNCTION ledger_store_dead_letter(text, bytea, bigint, bytea, text, text, text, integer);
DROP TABLE dead_letter_counts;
ALTER TABLE dead_letters
    DROP CONSTRAINT dead_letters_payload_sha256_check,
    DROP CONSTRAINT dead_letters_payload_bounded,
    DROP COLUMN payload_sha256,
    DROP COLUMN payload_length;

-- 2. Kiosks are their own checkpoint again (the column goes).
DROP FUNCTION sp_set_kiosk_checkpoint(text, text);
DROP TRIGGER kiosks_default_checkpoint ON kiosks;
DROP FUNCTION trg_kiosk_default_checkpoint();
ALTER TABLE kiosks DROP COLUMN checkpoint_id;

-- 1. The deposit account's cache goes; the account is parked as 'sales:deposit:cups'.
DROP TABLE deposit_balances;
UPDATE accounts SET kind = 'sales', name = 'sales:deposit:cups' WHERE name = 'deposit:cups';
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('card', 'sales', 'cash', 'terminal', 'stripe', 'shortfall'));
