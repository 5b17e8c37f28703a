"""deploy/festival-alerts.yml (issue 12 section 6): the Prometheus rules parse, cover what the
operations guide promises (consumer down, dead letters rising, ledger check failing, kiosk offline
for more than 5 minutes), and every metric an expression names is one the code exports — a
renamed metric would otherwise be an alert that silently never fires. promtool is not installed
on the build machine; this is the check that runs here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from cloud.api.metrics import ApiMetrics
from cloud.api.queries import DashboardQueries
from cloud.consumer.metrics import ConsumerMetrics
from cloud.database import make_engine

RULES = Path(__file__).resolve().parents[2] / "deploy" / "festival-alerts.yml"
# Metric names: what Prometheus itself makes (`up`) and everything of ours (festival_…).
METRIC = re.compile(r"\b(up|festival_[a-z0-9_]+)\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def exported_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_every_alert_names_only_metrics_the_code_exports(api_database_url: str) -> None:
    exported = exported_names(ConsumerMetrics.create().registry) | {"up"}
    api = ApiMetrics()
    engine = make_engine(api_database_url, pool_size=1)  # the API's role, as in production
    try:
        api.add_ledger_totals(DashboardQueries(engine, check=lambda: []).ledger_totals)
        exported |= exported_names(api.registry)
    finally:
        engine.dispose()
    assert "festival_ledger_kiosks_offline" in exported  # the totals were read from PostgreSQL
    for rule in rules():
        names = set(METRIC.findall(rule["expr"]))
        assert names, f"{rule['alert']}: its expression names no metric of ours"
        assert names <= exported, f"{rule['alert']}: not exported: {sorted(names - exported)}"


def test_the_promised_alerts_are_there_and_well_formed() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert len(by_name) == len(rules()), "alert names repeat"
    for name in (
        "FestivalConsumerDown",
        "FestivalDeadLettersRising",
        "FestivalLedgerCheckFailing",
        "FestivalKioskOffline",
    ):
        assert name in by_name, name
    assert "festival_consumer_dead_letters_total" in by_name["FestivalDeadLettersRising"]["expr"]
    assert by_name["FestivalLedgerCheckFailing"]["labels"]["severity"] == "critical"
    for rule in by_name.values():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
