"""deploy/deploy.sh against real PostgreSQL and Mosquitto: backup, migrate, check, roll back."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud.database import current_revision, upgrade
from cloud.keys import save_private_key
from cloud.sandbox import MosquittoBroker, PostgresServer
from protocol.keys import generate_private_key

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "deploy.sh"


@pytest.fixture
def environment(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, make_database: Callable[..., str]
) -> dict[str, str]:
    key_file = tmp_path / "cloud.pem"
    save_private_key(generate_private_key(), key_file)
    return {
        **os.environ,
        "DATABASE_URL": make_database(),
        "MQTT_URL": mosquitto_broker.url("cloud-consumer"),
        "CLOUD_SIGNING_KEY_FILE": str(key_file),
        "STRIPE_SECRET_KEY": "sk_test_51Deploy",
        "STRIPE_WEBHOOK_SECRET": "whsec_deploytest",
        "ADMIN_TOKEN": "admin-token-for-deploy-tests",
        "POS_API_TOKEN": "pos-token-for-deploy-tests",
    }


def _deploy(env: dict[str, str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DEPLOY), "--backup-dir", str(tmp_path / "backups"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _function_exists(server: PostgresServer, database: str, name: str) -> bool:
    return (
        server.psql(f"SELECT count(*) FROM pg_proc WHERE proname = '{name}'", database).strip()
        != "0"
    )


def test_deploy_backs_up_migrates_and_checks(
    environment: dict[str, str], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    done = _deploy(environment, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[ok] broker reachable" in done.stdout
    assert "[ok] ledger invariants hold" in done.stdout
    assert current_revision(environment["DATABASE_URL"]) is not None
    database = environment["DATABASE_URL"].rsplit("/", 1)[1]
    assert _function_exists(postgres_server, database, "sp_process_bar_order")
    (dump,) = (tmp_path / "backups").iterdir()
    assert dump.stat().st_size > 0
    assert dump.stat().st_mode & 0o077 == 0
    assert "sk_test_51Deploy" not in done.stdout + done.stderr


def test_a_failing_migration_is_rolled_back_to_the_recorded_revision(
    environment: dict[str, str], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = environment["DATABASE_URL"]
    database = url.rsplit("/", 1)[1]
    upgrade(url, "0001")
    # An object the next migration creates makes it fail halfway through a deploy.
    postgres_server.psql(
        "CREATE FUNCTION ledger_uuid7() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'", database
    )
    done = _deploy(environment, tmp_path)
    assert done.returncode == 1, done.stdout
    assert "[ok] database reachable, at revision 0001" in done.stdout
    assert "already exists" in done.stdout
    assert "[ok] rolled back to revision 0001" in done.stdout
    assert current_revision(url) == "0001"
    assert not _function_exists(postgres_server, database, "sp_process_bar_order")


def test_a_failed_health_check_downgrades_what_was_migrated(
    environment: dict[str, str], tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = environment["DATABASE_URL"]
    database = url.rsplit("/", 1)[1]
    upgrade(url, "0001")
    done = _deploy(environment, tmp_path, "--health-url", "http://127.0.0.1:9/readyz")
    assert done.returncode == 1, done.stdout
    assert "[ok] migrated to" in done.stdout
    assert "[FAILED] DeployError: health check http://127.0.0.1:9/readyz failed" in done.stdout
    assert "[ok] rolled back to revision 0001" in done.stdout
    assert current_revision(url) == "0001"
    assert not _function_exists(postgres_server, database, "sp_process_bar_order")


def test_preflight_refuses_a_readable_key_and_changes_nothing(
    environment: dict[str, str], tmp_path: Path
) -> None:
    Path(environment["CLOUD_SIGNING_KEY_FILE"]).chmod(0o644)
    done = _deploy(environment, tmp_path)
    assert done.returncode == 1
    assert "must be 0600" in done.stdout
    assert "nothing was changed" in done.stdout
    assert current_revision(environment["DATABASE_URL"]) is None
    assert not (tmp_path / "backups").exists()


def test_preflight_names_missing_variables(environment: dict[str, str], tmp_path: Path) -> None:
    del environment["STRIPE_WEBHOOK_SECRET"]
    environment["ADMIN_TOKEN"] = "changeme"
    done = _deploy(environment, tmp_path)
    assert done.returncode == 1
    assert "STRIPE_WEBHOOK_SECRET" in done.stdout


def test_preflight_fails_when_the_broker_refuses_credentials(
    environment: dict[str, str], tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    environment["MQTT_URL"] = f"mqtt://cloud-consumer:wrong@127.0.0.1:{mosquitto_broker.port}"
    done = _deploy(environment, tmp_path)
    assert done.returncode == 1
    assert "broker refused" in done.stdout
    assert "wrong" not in done.stdout
