"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from cloud.migrations.sql import sql_revision

revision, down_revision = ${repr(up_revision)}, ${repr(down_revision)}
branch_labels = depends_on = None
upgrade, downgrade = sql_revision(__file__)
