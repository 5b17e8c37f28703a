"""Alembic migrations of the ledger database; the SQL lives in versions/*.sql."""
