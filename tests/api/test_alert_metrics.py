"""Figures /metrics gained for the alert rules in deploy/festival-alerts.yml (issue 12 section 6):
enabled kiosks offline for more than 5 minutes, and the ledger invariant check's violations (run
behind the scrape cache at most every 15 minutes)."""

from __future__ import annotations

from sqlalchemy import Engine, text

from cloud.api import create_app
from cloud.api.queries import KIOSK_OFFLINE_ALERT_S, LEDGER_CHECK_INTERVAL_S, DashboardQueries
from cloud.settings import CloudSettings
from tests.api.conftest import LOOPBACK_PEER, TEST_LIMITS

PUBLIC_KEY = "A" * 43


def _add_kiosk(owner_engine: Engine, kiosk_id: str, state: str, age_s: int, enabled: bool) -> None:
    with owner_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO kiosks (kiosk_id, public_key_b64, role, enabled, state, state_at)"
                " VALUES (:id, :key, 'bar', :enabled, :state,"
                "         now() - make_interval(secs => :age_s))"
            ),
            {"id": kiosk_id, "key": PUBLIC_KEY, "enabled": enabled, "state": state, "age_s": age_s},
        )


def test_metrics_count_kiosks_offline_for_more_than_five_minutes(
    settings: CloudSettings, owner_engine: Engine
) -> None:
    from fastapi.testclient import TestClient

    long_ago = KIOSK_OFFLINE_ALERT_S + 60
    _add_kiosk(owner_engine, "bar-gone", "offline", long_ago, enabled=True)
    _add_kiosk(owner_engine, "bar-blip", "offline", 30, enabled=True)  # a short reconnect
    _add_kiosk(owner_engine, "bar-up", "online", long_ago, enabled=True)
    _add_kiosk(owner_engine, "bar-spare", "offline", long_ago, enabled=False)  # not in service
    app = create_app(settings, limits=TEST_LIMITS)
    with TestClient(app, client=LOOPBACK_PEER) as client:
        body = client.get("/metrics").text
    assert "festival_ledger_kiosks_offline 1.0" in body
    assert "festival_ledger_kiosks_enabled 3.0" in body
    assert "festival_ledger_check_violations 0.0" in body  # a fresh ledger is consistent


def test_the_ledger_check_behind_metrics_runs_at_most_every_interval(api_engine: Engine) -> None:
    now_s = [1000.0]
    found: list[list[str]] = [[], ["card 1 balance differs from its postings"]]
    calls: list[int] = []

    def check() -> list[str]:
        calls.append(1)
        return found[min(len(calls) - 1, 1)]

    queries = DashboardQueries(api_engine, check=check, clock_s=lambda: now_s[0])
    assert queries.ledger_totals()["check_violations"][1] == 0.0
    now_s[0] += LEDGER_CHECK_INTERVAL_S - 1
    assert queries.ledger_totals()["check_violations"][1] == 0.0
    assert len(calls) == 1
    now_s[0] += 1
    assert queries.ledger_totals()["check_violations"][1] == 1.0
    assert len(calls) == 2


def test_a_check_that_cannot_run_leaves_the_other_figures(api_engine: Engine) -> None:
    def check() -> list[str]:
        raise RuntimeError("statement timeout")

    totals = DashboardQueries(api_engine, check=check).ledger_totals()
    assert "check_violations" not in totals
    assert "kiosks_offline" in totals
