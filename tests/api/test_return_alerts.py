"""The cup-returns alert (DESIGN.md 1.1): a bar whose returns of the last hour exceed its own
deposits by more than 20 x FESTIVAL_RETURN_MAX_CENTS shows on the dashboard and in /metrics.

The attack it catches: a dishonest bar kiosk pays out made-up returns, each below the per-order
limit, from the deposits other bars took. Every order is approved (the deposit account holds
enough), so only the pattern shows it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.limits import RETURN_ALERT_FACTOR
from cloud.ledger import Ledger
from cloud.stripe_fake import FakeStripe
from protocol.models import BarItem
from tests.api.conftest import LOOPBACK_PEER, TEST_LIMITS, admin_headers, make_settings
from tests.ledger.helpers import bar_order, recharge

RETURN_MAX_CENTS = 100  # alert above 20 x 1.00 = 20.00 of returns beyond the bar's own deposits
CUP_CENTS = 100
HONEST_CARD = "04AA0000"
FRIEND_CARD = "04BB0000"


def cups(quantity: int, *, back: bool = False) -> BarItem:
    return BarItem("Cup", quantity, CUP_CENTS, sku="cup", is_deposit=True, is_return=back)


def alerting_bars(client: TestClient) -> list[dict[str, object]]:
    response = client.get("/api/monitoring/dashboard", headers=admin_headers())
    assert response.status_code == 200, response.text
    return list(response.json()["return_alerts"])


def alert_metric(client: TestClient) -> float:
    body = client.get("/metrics").text
    [line] = [line for line in body.splitlines() if line.startswith("festival_ledger_bars_returns")]
    return float(line.split()[-1])


def test_a_bar_returning_far_more_than_it_takes_raises_the_alert(
    ledger: Ledger, api_ledger: Ledger, api_database_url: str, fake_stripe: FakeStripe
) -> None:
    settings = make_settings(
        api_database_url, fake_stripe.base_url, festival_return_max_cents=RETURN_MAX_CENTS
    )
    app = create_app(settings, ledger=api_ledger, limits=TEST_LIMITS)
    threshold_cents = RETURN_ALERT_FACTOR * RETURN_MAX_CENTS
    strict = Ledger(ledger.engine, return_cents_max=RETURN_MAX_CENTS)
    # The honest bar sells 60 cups of deposit (60.00 in the deposit account).
    assert strict.apply(recharge(HONEST_CARD, 10_000)).approved
    assert strict.apply(bar_order(HONEST_CARD, cups(60), kiosk_id="bar-1")).approved
    assert strict.apply(recharge(FRIEND_CARD, 300)).approved

    with TestClient(app, client=LOOPBACK_PEER) as client:
        assert alerting_bars(client) == []
        # The dishonest bar: one cup "back" per tap, each within the per-order limit, and a
        # few real deposits of its own to look busy. Up to the threshold: no alert.
        assert strict.apply(bar_order(FRIEND_CARD, cups(2), kiosk_id="bar-2")).approved
        for _ in range(threshold_cents // CUP_CENTS + 2):  # returns - deposits = threshold
            assert strict.apply(
                bar_order(FRIEND_CARD, cups(1, back=True), kiosk_id="bar-2")
            ).approved
        assert alerting_bars(client) == []
        assert alert_metric(client) == 0.0

        # One cup more: beyond the threshold.
        assert strict.apply(bar_order(FRIEND_CARD, cups(1, back=True), kiosk_id="bar-2")).approved
        [alert] = alerting_bars(client)
        assert alert == {
            "kiosk_id": "bar-2",
            "deposits_cents": 200,
            "returns_cents": threshold_cents + 300,
            "excess_cents": threshold_cents + 100,
            "threshold_cents": threshold_cents,
            "window_s": 3600,
        }
        # The honest bar (deposits only) never alerts; the metric counts alerting bars (it is
        # cached for up to 10 s: a fresh app reads it now).
    with TestClient(
        create_app(settings, ledger=api_ledger, limits=TEST_LIMITS), client=LOOPBACK_PEER
    ) as fresh:
        assert alert_metric(fresh) == 1.0
    assert ledger.check() == []
