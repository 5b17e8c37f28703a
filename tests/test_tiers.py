"""The test tiers (tests/tiers.py): every test has one, and a unit test cannot use a service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiers import (
    E2E_FOLDERS,
    SERVICE_FIXTURES,
    TIERS,
    ServiceInUnitTest,
    program_of,
    tier_of,
)

ROOT = Path(__file__).resolve().parent.parent


def test_every_collected_test_has_one_tier_and_no_unit_test_uses_a_service(
    request: pytest.FixtureRequest,
) -> None:
    """Over everything this session collected (the whole suite in `./run test`)."""
    items = request.session.items
    assert items
    for item in items:
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        assert len(tiers) == 1, (item.nodeid, tiers)
        if tiers == {"unit"}:
            services = SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            assert not services, (item.nodeid, services)
            assert item.nodeid.split("/")[1] not in E2E_FOLDERS, item.nodeid


@pytest.mark.parametrize(
    ("path", "fixtures", "explicit", "browser", "expected"),
    [
        ("protocol/test_codec.py", ["tmp_path"], [], False, "unit"),
        ("ledger/test_procedures.py", ["ledger", "database_url", "postgres_server"], [], False,
         "integration"),
        ("device/test_reader_pcsc.py", ["pcscd"], [], False, "integration"),
        ("device/test_kiosk_process.py", ["kiosk_broker", "tmp_path"], [], False, "integration"),
        ("consumer/test_consumer_faults.py", ["tmp_path"], [], False, "integration"),
        ("smoke/test_services.py", [], [], False, "e2e"),
        ("systemd/test_units.py", ["tmp_path"], [], False, "e2e"),
        ("api/test_dashboard_browser.py", ["postgres_server"], [], True, "e2e"),
        ("device/test_kiosk_end_to_end.py", ["pcscd"], [], False, "e2e"),
        ("contract/test_link_contract.py", ["make_harness"], ["integration"], False,
         "integration"),
        ("protocol/test_codec.py", [], ["e2e", "e2e"], False, "e2e"),
    ],
)  # fmt: skip
def test_the_tier_follows_from_what_a_test_uses(
    path: str, fixtures: list[str], explicit: list[str], browser: bool, expected: str
) -> None:
    assert tier_of(path, fixtures, explicit, browser) == expected


@pytest.mark.parametrize(
    ("path", "fixtures", "explicit"),
    [
        ("ledger/test_procedures.py", ["database_url", "postgres_server"], ["unit"]),
        ("smoke/test_services.py", [], ["unit"]),
        ("protocol/test_codec.py", [], ["unit", "integration"]),
    ],
)
def test_a_tier_contradicting_what_a_test_uses_is_refused(
    path: str, fixtures: list[str], explicit: list[str]
) -> None:
    with pytest.raises(ValueError, match=path):
        tier_of(path, fixtures, explicit, False)


def test_a_unit_test_cannot_start_a_service() -> None:
    """This test is unit: the guard is on while it runs."""
    for command in (["/usr/sbin/mosquitto", "-c", "x.conf"], "postgres -D data", ["pcscd"]):
        with pytest.raises(ServiceInUnitTest, match="mark it integration or e2e"):
            subprocess.Popen(command)
        with pytest.raises(ServiceInUnitTest):
            subprocess.run(command, check=False)
    # Anything else still runs.
    done = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True, text=True)
    assert done.stdout == "ok\n"


@pytest.mark.parametrize(
    ("args", "program"),
    [
        (["/usr/lib/postgresql/15/bin/postgres", "-D", "x"], "postgres"),
        ("mosquitto -c 'a b.conf'", "mosquitto"),
        (b"/usr/bin/chromedriver", "chromedriver"),
        (Path("/usr/sbin/pcscd"), "pcscd"),
        ([], ""),
    ],
)
def test_the_program_of_a_command(args: object, program: str) -> None:
    assert program_of(args) == program


def test_minus_m_unit_selects_only_the_pure_tier() -> None:
    """`pytest -m unit` on the contract tests and the kiosk shell: the fakes' side and the
    shell stay, the PostgreSQL and Mosquitto sides go."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "unit"),
            *("--collect-only", "-q", "tests/contract", "tests/device/test_kiosk_shell.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    selected = [line for line in done.stdout.splitlines() if "::" in line]
    assert any("::TestFakeLedger::" in line for line in selected)
    assert any("::TestFakeLink::" in line for line in selected)
    assert any(line.startswith("tests/device/test_kiosk_shell.py::") for line in selected)
    for integration in ("::TestPostgresLedger::", "::TestMqttLink::", "long_script"):
        assert not any(integration in line for line in selected), integration
