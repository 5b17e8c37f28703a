-- Revision 0011 undone: back to 0010. The procedures are revision 0009's again, copied here
-- word for word (tests/ledger/test_r0011_prices.py compares the whole schema with 0010's).

DROP FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer);
DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint, integer);
DROP FUNCTION ledger_decide_request(
    ledger_request, text, bigint, bigint, bigint, bigint, bigint, text);
DROP FUNCTION ledger_price_problems(jsonb, integer);
DROP TRIGGER kiosk_configs_items ON kiosk_configs;
DROP FUNCTION trg_kiosk_config_items();
DROP FUNCTION ledger_config_items(text, integer, jsonb);
DROP TABLE kiosk_config_items;
ALTER TYPE ledger_request DROP ATTRIBUTE created_at_ms, DROP ATTRIBUTE config_version;

--@restore ledger_limit from 0009

--@restore ledger_decide_request from 0009

--@restore ledger_write_requests from 0009

--@restore ledger_process_requests from 0009

--@restore sp_process_batch from 0009

--@restore sp_handle_request from 0009

--@restore sp_process_bar_order from 0009

--@restore sp_process_checkpoint_recharge from 0009

REVOKE EXECUTE ON FUNCTION
    ledger_decide_request(ledger_request, text, bigint, bigint, bigint, bigint, bigint),
    ledger_process_requests(jsonb, bigint, bigint, bigint),
    sp_process_batch(jsonb, bigint, bigint, bigint),
    sp_handle_request(jsonb, bigint, bigint, bigint)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint) TO festival_service;
GRANT EXECUTE ON FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint)
    TO festival_service, festival_api;
