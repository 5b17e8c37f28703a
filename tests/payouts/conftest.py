"""The ledger fixtures (a fresh migrated database, the service role) for the payout tests."""

from tests.ledger.conftest import ledger

__all__ = ["ledger"]
