"""`festival-cloud api` through the real console script: serves, logs JSON lines, stops on
SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from cloud.sandbox import free_port
from tests.api.conftest import ADMIN_TOKEN, STRIPE_KEY, WEBHOOK_SECRET
from tests.waiting import wait_until

FESTIVAL_CLOUD = Path(sys.executable).with_name("festival-cloud")


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status), response.read()
    except OSError:
        return 0, b""


def test_festival_cloud_api_serves_and_stops_on_sigterm(
    api_database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STRIPE_", "ADMIN_", "POS_"))
    }
    environment.update(
        {
            "DATABASE_URL": api_database_url,  # the API's own role, as in production
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "POS_API_TOKEN": "the-shared-token-of-before-1.1",
            "STRIPE_SECRET_KEY": STRIPE_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "FESTIVAL_ENVIRONMENT": "development",
        }
    )
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(FESTIVAL_CLOUD), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: _get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout_s=20, what="the API"
        )
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and json.loads(body)["database"] == "ok"
        status, body = _get(
            f"http://127.0.0.1:{port}/api/monitoring/ledger",
            {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Request-ID": "cli-test-1"},
        )
        assert status == 200 and json.loads(body) == {"ok": True, "violations": []}
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=20)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (systemd counts that
    # as a clean stop); what matters is that it finished its shutdown.
    assert exit_code in (0, -signal.SIGTERM), log_path.read_text()[-2000:]
    assert any(line.get("event", "").startswith("Finished server process") for line in lines)
    request_lines = [line for line in lines if line.get("event") == "request"]
    assert any(
        line.get("request_id") == "cli-test-1" and line["status"] == 200 for line in request_lines
    )
    # Configuration gaps are said once at start, in the log: the old shared POS token is
    # accepted (start-up works) but grants nothing; festival_api has no powers to warn about.
    events = [str(line.get("event")) for line in lines]
    assert sum("POS_API_TOKEN is set but grants nothing" in event for event in events) == 1
    assert not any("connect it as festival_api" in event for event in events)


def test_festival_cloud_api_without_a_database_url_is_a_configuration_error() -> None:
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    result = subprocess.run(
        [str(FESTIVAL_CLOUD), "api", "--port", "1"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "DATABASE_URL" in result.stderr
