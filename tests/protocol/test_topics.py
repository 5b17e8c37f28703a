"""Topic names: build, parse, validate."""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCode, ProtocolError
from protocol.topics import (
    Topic,
    TopicKind,
    parse_topic,
    shared_subscription,
    subscription,
    topic_for,
    validate_kiosk_id,
    validate_topic_prefix,
)


def test_topic_for_every_kind() -> None:
    assert [topic_for("festival", "bar-01", kind) for kind in TopicKind] == [
        "festival/v1/kiosks/bar-01/tx",
        "festival/v1/kiosks/bar-01/result",
        "festival/v1/kiosks/bar-01/scan",
        "festival/v1/kiosks/bar-01/status",
        "festival/v1/kiosks/bar-01/config",
    ]


def test_topic_object_text_and_str() -> None:
    topic = Topic("festival", "bar-01", TopicKind.RESULT)
    assert topic.text == str(topic) == "festival/v1/kiosks/bar-01/result"


def test_parse_round_trips() -> None:
    for kind in TopicKind:
        text = topic_for("acme/summer-2025", "checkpoint-1", kind)
        assert parse_topic(text, "acme/summer-2025") == Topic(
            "acme/summer-2025", "checkpoint-1", kind
        )


def test_shared_subscription() -> None:
    assert shared_subscription("festival", TopicKind.TX) == "$share/ledger/festival/v1/kiosks/+/tx"
    assert shared_subscription("festival", "scan", group="scans") == (
        "$share/scans/festival/v1/kiosks/+/scan"
    )
    assert subscription("festival", TopicKind.STATUS) == "festival/v1/kiosks/+/status"
    with pytest.raises(ValueError):
        shared_subscription("festival", TopicKind.TX, group="a/b")


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/kiosks/bar-01/tx",  # another deployment
        "festival/v2/kiosks/bar-01/tx",
        "festival/v1/kiosk/bar-01/tx",
        "festival/v1/kiosks/bar-01",
        "festival/v1/kiosks/bar-01/tx/extra",
        "festival/v1/kiosks/bar-01/tx/",
        "festival/v1/kiosks//tx",
        "festival/v1/kiosks/+/tx",
        "festival/v1/kiosks/#",
        "festival/v1/kiosks/bar-01/TX",
        "festival/v1/kiosks/bar-01/command",
        "festival/v1/kiosks/Bar-01/tx",
        "festival/v1/kiosks/b\u0430r-01/tx",  # Cyrillic a
        "festival/v1/kiosks/bar_01/tx",
        "festival/v1/kiosks/cloud/result",  # reserved
        "/festival/v1/kiosks/bar-01/tx",
        "festivalx/v1/kiosks/bar-01/tx",
        "$share/ledger/festival/v1/kiosks/bar-01/tx",
        "",
    ],
)
def test_parse_rejects_everything_else(topic: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_topic(topic, "festival")
    assert caught.value.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    "kiosk_id", ["a", "bar-01", "a" * 32, "x-", "z9", "checkpoint-entrance-north"]
)
def test_valid_kiosk_ids(kiosk_id: str) -> None:
    assert validate_kiosk_id(kiosk_id) == kiosk_id


@pytest.mark.parametrize(
    "kiosk_id",
    [
        "",
        "a" * 33,
        "1bar",
        "-bar",
        "Bar",
        "bar_01",
        "bar.01",
        "bar/01",
        "bar+",
        "bar 01",
        "bar-01\n",
        "b\u0430r",  # Cyrillic a
        "bar-\uff10\uff11",  # fullwidth digits
        "cloud",
        None,
        1,
    ],
)
def test_invalid_kiosk_ids(kiosk_id: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        validate_kiosk_id(kiosk_id)
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert len(caught.value.message) <= 200


@pytest.mark.parametrize("prefix", ["festival", "acme/fest-2025", "a_b", "x" * 64])
def test_valid_prefixes(prefix: str) -> None:
    assert validate_topic_prefix(prefix) == prefix


@pytest.mark.parametrize(
    "prefix", ["", "/festival", "festival/", "a//b", "fest+", "fest#", "$SYS", "x" * 65, "f\u00e9"]
)
def test_invalid_prefixes_are_configuration_errors(prefix: str) -> None:
    with pytest.raises(ValueError):
        validate_topic_prefix(prefix)
    with pytest.raises(ValueError):
        topic_for(prefix, "bar-01", TopicKind.TX)


def test_topic_rejects_invalid_kiosk_id() -> None:
    with pytest.raises(ProtocolError):
        Topic("festival", "Bar", TopicKind.TX)
