"""The systemd units verify cleanly and carry the hardening the operations guide promises."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_BIN = "/opt/festival/.venv/bin/"


def _directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "[")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def _systemd_analyze() -> str:
    program = shutil.which("systemd-analyze")
    assert program, "systemd-analyze not found: apt-get install -y systemd"
    return program


@pytest.fixture(scope="module")
def rendered_units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart pointing at this checkout's venv (verify checks the binaries)."""
    target = tmp_path_factory.mktemp("units")
    venv_bin = str(Path(sys.executable).parent) + "/"
    for unit in UNITS.iterdir():
        text = unit.read_text().replace(INSTALLED_BIN, venv_bin)
        name = unit.name.replace("@.service", "@1.service")
        (target / name).write_text(text)
    return target


def test_every_unit_verifies_without_warnings(rendered_units: Path) -> None:
    units = sorted(str(path) for path in rendered_units.iterdir())
    assert len(units) >= 7
    result = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_catches_a_broken_unit(rendered_units: Path, tmp_path: Path) -> None:
    broken = tmp_path / "festival-broken.service"
    broken.write_text(
        (rendered_units / "festival-api.service")
        .read_text()
        .replace("Type=notify", "Type=notify\nExecStart=/nonexistent/festival-cloud")
    )
    result = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 or result.stderr.strip() != ""


def test_kiosk_unit_is_hardened_for_pcscd_and_gpio() -> None:
    kiosk = _directives(UNITS / "festival-kiosk.service")
    assert kiosk["Type"] == ["notify"]
    assert kiosk["Restart"] == ["always"]
    assert kiosk["StartLimitIntervalSec"] == ["0"]
    assert int(kiosk["WatchdogSec"][0]) > 0
    assert any("pcscd.service" in value for value in kiosk["After"])
    assert kiosk["StateDirectory"] == ["festival-kiosk"]
    assert kiosk["User"] == ["festival-kiosk"]
    assert "gpio" in kiosk["SupplementaryGroups"][0].split()
    assert kiosk["ProtectSystem"] == ["strict"]
    assert kiosk["NoNewPrivileges"] == ["yes"]
    # These two break pcscd access and GPIO on a Pi.
    assert "PrivateDevices" not in kiosk
    assert "PrivateUsers" not in kiosk


@pytest.mark.parametrize("unit", ["festival-consumer@.service", "festival-api.service"])
def test_cloud_units_read_settings_from_an_environment_file(unit: str) -> None:
    directives = _directives(UNITS / unit)
    assert directives["EnvironmentFile"][0] == "/etc/festival/cloud.env"
    assert directives["NoNewPrivileges"] == ["yes"]
    assert directives["ProtectSystem"] == ["strict"]
    assert directives["Restart"] == ["always"]


def test_the_api_unit_connects_with_its_own_database_role() -> None:
    """Issue 11 item 11: the API's DATABASE_URL (festival_api) comes from a file of its own, read
    after cloud.env (the consumer's festival_service URL), and is required: the unit does not
    start as the consumer's role by accident."""
    api = _directives(UNITS / "festival-api.service")["EnvironmentFile"]
    consumer = _directives(UNITS / "festival-consumer@.service")["EnvironmentFile"]
    assert api == ["/etc/festival/cloud.env", "/etc/festival/api.env"]
    assert consumer == ["/etc/festival/cloud.env"]


def test_consumer_unit_is_supervised_by_the_watchdog() -> None:
    consumer = _directives(UNITS / "festival-consumer@.service")
    assert consumer["Type"] == ["notify"]
    assert int(consumer["WatchdogSec"][0]) > 0
    assert any(value.startswith("CONSUMER_ID=") for value in consumer["Environment"])


def test_cleanup_timer_runs_the_cleanup_verb() -> None:
    timer = _directives(UNITS / "festival-cleanup.timer")
    service = _directives(UNITS / "festival-cleanup.service")
    assert timer["OnCalendar"]
    assert service["ExecStart"][0].endswith("festival-cloud cleanup")
    assert service["Type"] == ["oneshot"]


def test_kiosk_unit_does_not_restart_forever_when_it_cannot_run_here() -> None:
    """Exit 1 (GPIO cannot run, e.g. RPi.GPIO on a Pi 5) and 2 (bad settings) stop the restarts;
    transient failures (outbox, HTTP port: exit 75) and crashes are still restarted."""
    kiosk = _directives(UNITS / "festival-kiosk.service")
    assert kiosk["Restart"] == ["always"]
    prevented = {code for value in kiosk["RestartPreventExitStatus"] for code in value.split()}
    assert prevented == {"1", "2"}
    from device import main as firmware

    assert (firmware.EXIT_CANNOT_RUN_HERE, firmware.EXIT_INVALID_SETTINGS) == (1, 2)
    assert str(firmware.EXIT_RETRY) not in prevented


def test_kiosk_unit_gives_lgpio_a_writable_working_directory() -> None:
    kiosk = _directives(UNITS / "festival-kiosk.service")
    assert kiosk["RuntimeDirectory"] == ["festival-kiosk"]
    assert "LG_WD=/run/festival-kiosk" in kiosk["Environment"]


def test_consumer_instances_get_their_own_metrics_port() -> None:
    consumer = _directives(UNITS / "festival-consumer@.service")
    assert "CONSUMER_METRICS_PORT_OFFSET=%i" in consumer["Environment"]
    assert "CONSUMER_ID=consumer-%H-%i" in consumer["Environment"]


def test_a_kiosk_crash_exits_with_a_code_the_unit_restarts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Python exits 1 on an uncaught exception, and 1 is not restarted ("cannot run here"):
    festival-kiosk turns a crash into 70 (EX_SOFTWARE), which is."""
    from device import cli
    from device import main as firmware

    def crash() -> int:
        raise RuntimeError("a bug in the loop")

    monkeypatch.setattr(firmware, "run_from_env", crash)
    assert cli.main(["run"]) == firmware.EXIT_CRASHED == 70
    [record] = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert record.getMessage() == "kiosk crashed: restarting" and record.exc_info is not None
    prevented = _directives(UNITS / "festival-kiosk.service")["RestartPreventExitStatus"][0]
    assert "70" not in prevented.split()


def test_api_unit_is_notify_and_supervised_by_the_watchdog() -> None:
    """Issue 12 section 6: systemd knows when the API serves (READY=1 once the port listens,
    cloud/api/serve.py) and restarts it when its event loop stops pinging."""
    api = _directives(UNITS / "festival-api.service")
    assert api["Type"] == ["notify"]
    assert api["NotifyAccess"] == ["main"]
    assert int(api["WatchdogSec"][0]) > 0


def test_a_failed_ledger_check_starts_the_alert_unit(rendered_units: Path) -> None:
    """Issue 12 section 6: the check timer's service names an OnFailure= unit, which exists and
    writes one line at priority err to the journal naming the failed unit."""
    check = _directives(UNITS / "festival-check.service")
    assert check["OnFailure"] == ["festival-alert@%n.service"]
    alert = _directives(UNITS / "festival-alert@.service")
    assert alert["Type"] == ["oneshot"]
    assert alert["SyslogLevel"] == ["err"]
    assert alert["StandardOutput"] == ["journal"]
    assert "%i failed" in alert["ExecStart"][0]
    # The instance systemd starts for a failed check verifies like every other unit.
    instance = rendered_units / "festival-alert@festival-check.service.service"
    instance.write_text((UNITS / "festival-alert@.service").read_text())
    try:
        result = subprocess.run(
            [_systemd_analyze(), "verify", "--man=no", str(instance)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        instance.unlink()
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
