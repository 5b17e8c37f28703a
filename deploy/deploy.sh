#!/usr/bin/env bash
# Deploy the cloud side: pre-flight checks, pg_dump backup, migrations, health checks, and a
# rollback to the recorded revision on failure. See docs/operations.md, "Deploying".
#   set -a; . /etc/festival/cloud.env; set +a      # DATABASE_URL must name the schema owner
#   deploy/deploy.sh [--target REV] [--backup-dir DIR] [--health-url URL]... [--skip-broker-check]
set -euo pipefail
here="$(dirname "$(readlink -f "$0")")"
python="${FESTIVAL_PYTHON:-$here/../.venv/bin/python}"
[ -x "$python" ] || python="/opt/festival/.venv/bin/python"
exec "$python" -m cloud.deploy "$@"
