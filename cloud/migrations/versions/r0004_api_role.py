"""The internet-facing API gets its own database role, festival_api (least privilege per process).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from cloud.migrations.sql import run_sql_file

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql_file(__file__, "upgrade")


def downgrade() -> None:
    run_sql_file(__file__, "downgrade")
