"""${message}

Revision ${up_revision}, after ${down_revision | comma,n}, ${create_date}."""

from cloud.migrations.sql import sql_revision

revision, down_revision, branch_labels, depends_on = ${repr(up_revision)}, ${repr(down_revision)}, None, None
upgrade, downgrade = sql_revision(__file__)
