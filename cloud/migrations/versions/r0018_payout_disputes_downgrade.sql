-- Revision 0018 undone: r0015's sp_payout_request, as it was.
--@restore sp_payout_request from 0015

