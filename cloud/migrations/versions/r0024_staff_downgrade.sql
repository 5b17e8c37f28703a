-- Revision 0024 (staff and roles) undone: revision 0023's schema exactly. Refused while a staff
-- login or logout is recorded (processed_requests' kinds no longer allow them: a ledger's history
-- is not rewritten by a downgrade).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM processed_requests WHERE kind IN ('staff_login', 'staff_logout')) THEN
        RAISE EXCEPTION 'revision 0024 cannot be undone: staff logins are recorded'
            USING ERRCODE = 'object_in_use';
    END IF;
END
$$;

DROP FUNCTION sp_staff_list();
DROP FUNCTION sp_staff_pin_hashes(text[]);
DROP FUNCTION sp_staff_disable(text);
DROP FUNCTION sp_staff_set_pin(text, text);
DROP FUNCTION sp_staff_add(text, text, text, text, text);
DROP FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer, boolean);
DROP FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer, boolean);
DROP FUNCTION ledger_process_requests(jsonb, bigint, bigint, bigint, integer, integer, boolean);
DROP FUNCTION ledger_staff_rejection(jsonb);
DROP FUNCTION ledger_process_staff_request(jsonb, boolean);
DROP FUNCTION ledger_write_moneyless(ledger_request, text, jsonb, timestamptz);
DROP FUNCTION ledger_staff_refusal(ledger_request, timestamptz);
DROP FUNCTION ledger_staff_role_allows(text, text);
DROP FUNCTION ledger_staff_limit(text);

-- revision 0022's (cash-out)
--@restore ledger_process_requests from 0022


--@restore sp_process_batch from 0016

--@restore sp_handle_request from 0016


REVOKE EXECUTE ON FUNCTION
    ledger_process_requests(jsonb, bigint, bigint, bigint, integer, integer),
    sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer),
    sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sp_process_batch(jsonb, bigint, bigint, bigint, integer, integer)
    TO festival_service;
GRANT EXECUTE ON FUNCTION sp_handle_request(jsonb, bigint, bigint, bigint, integer, integer)
    TO festival_service, festival_api;

-- revision 0022's (cash-out)
--@restore ledger_source_function from 0022

-- revision 0021's
--@restore ledger_write_requests from 0021

-- revision 0020's
--@restore ledger_check from 0020

DROP TABLE staff_logins;
DROP TABLE staff_login_failures;
DROP TABLE staff_members;

ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_check
    CHECK ((status = 'approved') = (transaction_id IS NOT NULL));
ALTER TABLE processed_requests DROP CONSTRAINT processed_requests_kind_check;
ALTER TABLE processed_requests ADD CONSTRAINT processed_requests_kind_check
    CHECK (kind IN ('bar_order', 'checkpoint_recharge', 'void', 'card_swap', 'cash_out'));
