"""Registered POS devices with hashed tokens; shared rate limits; the API role's grants.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from cloud.migrations.sql import run_sql_file

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__, "upgrade")


def downgrade() -> None:
    run_sql_file(__file__, "downgrade")
