"""Every limit in its package's limits.py, one naming order, and every MQTT connect bounded."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import cloud.consumer.limits as consumer_limits
import device.limits as device_limits
from cloud.consumer.inbox import Inbox
from cloud.consumer.mqtt_link import MqttLink as ConsumerLink
from cloud.consumer.mqtt_link import Subscription
from device.mqtt_link import MqttLink as KioskLink
from protocol.mqtt_url import parse_mqtt_url

ROOT = Path(__file__).resolve().parent.parent
LIMIT_FILES = [
    ROOT / "protocol" / "limits.py",
    ROOT / "device" / "limits.py",
    ROOT / "cloud" / "limits.py",
    ROOT / "cloud" / "consumer" / "limits.py",
    ROOT / "cloud" / "api" / "limits.py",
]
# A duration limit puts its bound before its unit: RECONNECT_DELAY_MIN_S, never ..._S_MIN.
UNIT_BEFORE_BOUND = re.compile(r"_(S|MS)_(MIN|MAX)\b")
# Not renamed yet: the bounds of the wire's *_ms fields, used only by protocol/models.py's parse
# functions, which issue 12 section 1 rewrites in parallel (renamed after that merge).
NOT_YET_RENAMED = {
    "TIMESTAMP_MS_MIN",
    "TIMESTAMP_MS_MAX",
    "SCAN_DURATION_MS_MIN",
    "SCAN_DURATION_MS_MAX",
}


def _constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names += [target.id for target in targets if isinstance(target, ast.Name)]
    return names


@pytest.mark.parametrize("path", LIMIT_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_duration_limits_put_the_unit_last(path: Path) -> None:
    names = set(_constants(path)) - NOT_YET_RENAMED
    assert [name for name in sorted(names) if UNIT_BEFORE_BOUND.search(name)] == []


# Not moved yet: files other sections of issue 12 restructure in parallel (protocol/keys.py's file
# I/O, cloud/database.py and cloud/api/queries.py's SQLAlchemy adapter, cloud/ledger.py's
# outcome, cloud/deploy.py's paho use); their limits move after those merges.
NOT_YET_MOVED = {
    "keys.py",
    "database.py",
    "queries.py",
    "ledger.py",
    "ledger_records.py",
    "deploy.py",
}


@pytest.mark.parametrize("package", ["protocol", "device", "cloud", "cloud/consumer", "cloud/api"])
def test_modules_define_no_limits_of_their_own(package: str) -> None:
    """Module-level bounds (…_MAX, …_MIN, …_TIMEOUT_S) live in the package's limits.py."""
    bound = re.compile(r"(_MAX|_MIN|_TIMEOUT_S|_TIMEOUT_MS)$")
    found = {
        f"{path.name}:{name}"
        for path in (ROOT / package).glob("*.py")
        if path.name != "limits.py" and path.name not in NOT_YET_MOVED
        for name in _constants(path)
        if bound.search(name) and not name.startswith("_")  # private: derived in place
    }
    assert found == set()


def test_the_kiosk_link_bounds_its_connect() -> None:
    link = KioskLink(
        endpoint=parse_mqtt_url("mqtt://bar-1:secret@127.0.0.1:1"),
        kiosk_id="bar-1",
        topic_prefix="festival",
        firmware="test",
        queued_max=10,
        clock_ms=lambda: 0,
    )
    assert link._client.connect_timeout == device_limits.CONNECT_TIMEOUT_S


def test_the_consumer_link_bounds_its_connect() -> None:
    link = ConsumerLink(
        endpoint=parse_mqtt_url("mqtt://cloud-consumer:secret@127.0.0.1:1"),
        client_id="consumer-test",
        inbox=Inbox(messages_max=10, scans_max=10, events_max=10),
        subscriptions=[Subscription("$share/ledger/festival/v1/kiosks/+/tx", 1)],
        receive_maximum=256,
    )
    assert link._client.connect_timeout == consumer_limits.CONNECT_TIMEOUT_S


def test_the_broker_control_client_bounds_its_connect() -> None:
    """The broker's control channel, deploy's login check and the demo's probe all connect
    through the consumer side's one paho adapter, short_session (issue 12 section 3)."""
    source = (ROOT / "cloud" / "consumer" / "mqtt_link.py").read_text()
    short_session = source[source.index("def short_session(") :]
    assert "client.connect_timeout = limits.CONNECT_TIMEOUT_S" in short_session
    assert "short_session(" in (ROOT / "cloud" / "broker.py").read_text()
