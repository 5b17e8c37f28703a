-- Revision 0016's downgrade: back to revision 0015 exactly. It refuses while voids or card
-- swaps are recorded: their transactions and claims cannot be expressed in revision 0015, and
-- the ledger is append-only.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM voids) OR EXISTS (SELECT 1 FROM card_swaps)
       OR EXISTS (SELECT 1 FROM processed_requests WHERE kind IN ('void', 'card_swap')) THEN
        RAISE EXCEPTION 'revision 0016 cannot be downgraded: voids or card swaps exist'
            USING ERRCODE = 'object_in_use';
    END IF;
END
$$;

DROP FUNCTION sp_card_swap(text, text, text, bigint);
DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer);
DROP FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint, integer, integer);
DROP FUNCTION ledger_process_counter_request(jsonb, bigint, integer, boolean);
DROP FUNCTION ledger_decide_void(ledger_request, processed_requests, bar_orders, bigint, boolean,
                                 bigint, timestamptz, integer);
DROP FUNCTION ledger_decide_card_swap(ledger_request, cards, cards, text, text, bigint);
DROP FUNCTION ledger_blocked_by_the_system(text);
DROP FUNCTION ledger_replacement_of(text);

ALTER FUNCTION ledger_process_plain_requests(jsonb, bigint, bigint, bigint, integer)
    RENAME TO ledger_process_requests;

-- revision 0011's
--@restore sp_process_batch from 0011

-- One kiosk or POS request (an object of the form sp_process_batch takes), in its own
-- transaction: what Ledger.apply calls, for the consumer and the API's POS endpoints alike.
--@restore sp_handle_request from 0011

REVOKE EXECUTE ON FUNCTION
    sp_process_batch(jsonb, bigint, bigint, bigint, integer),
    sp_handle_request(jsonb, bigint, bigint, bigint, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer)
    TO festival_service;
GRANT EXECUTE ON FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer)
    TO festival_service, festival_api;

-- revision 0013's
--@restore ledger_write_requests from 0013

-- revision 0013's
--@restore ledger_check_accounts from 0013

-- revision 0014's
--@restore ledger_limit from 0014

-- revision 0009's
--@restore ledger_source_function from 0009

DROP TYPE ledger_counter_decision;
ALTER TYPE ledger_request
    DROP ATTRIBUTE old_card_uid,
    DROP ATTRIBUTE original_request_id,
    DROP ATTRIBUTE old_sun_counter,
    DROP ATTRIBUTE old_sun_failure,
    DROP ATTRIBUTE decided;

DROP TABLE card_swaps;
DROP TABLE voids;
ALTER TABLE bar_orders DROP COLUMN created_at_ms;
ALTER TABLE cards
    DROP CONSTRAINT cards_replaced_by_another,
    DROP CONSTRAINT cards_replaced_is_blocked,
    DROP COLUMN replaced_by;

ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_kind_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_kind_check
    CHECK (kind IN ('bar_order', 'checkpoint_recharge'));

ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check CHECK (kind IN (
    'bar_order', 'checkpoint_recharge', 'stripe_recharge', 'stripe_refund', 'payout',
    'payout_return'));
