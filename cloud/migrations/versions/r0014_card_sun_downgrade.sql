-- Revision 0013 down: revision 0011's batch and limit (0012 left them as they were), no SUN counters.

--@restore ledger_limit from 0011

--@restore ledger_process_requests from 0013

DROP FUNCTION sp_portal_tap_login(text, integer, bytea, integer);
DROP FUNCTION sp_accept_sun_counter(text, integer);
DROP FUNCTION ledger_sun_message(text);
DROP TABLE sun_failure_minutes;
DROP TABLE card_sun_counters;

ALTER TYPE ledger_decision DROP ATTRIBUTE sun_failed_offline;
ALTER TYPE ledger_request
    DROP ATTRIBUTE sun_failure,
    DROP ATTRIBUTE sun_counter;
