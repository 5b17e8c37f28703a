-- Revision 0003 rolled back: the webhook's metadata fallback goes; revision 0002's procedures
-- (matching by payment intent only) stay, and so does every row written meanwhile.
DROP FUNCTION sp_handle_stripe_dispute(text, text, text, text);
DROP FUNCTION sp_handle_stripe_refund(text, text, text, bigint, text);
DROP FUNCTION ledger_metadata_outcome(text, boolean);
DROP FUNCTION ledger_block_reason(text, text, text);
DROP FUNCTION ledger_card_uid_valid(text);
