"""URL passwords are hidden in every message: one function, any text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.mqtt_url import parse_mqtt_url
from protocol.redaction import redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mqtt://bar-1:s3cret@broker:1883", "mqtt://bar-1:***@broker:1883"),
        ("mqtts://:s3cret@broker", "mqtts://:***@broker"),
        (
            "postgresql+psycopg2://festival:s3cret@db:5432/festival",
            "postgresql+psycopg2://festival:***@db:5432/festival",
        ),
        # Malformed: '#', '/' and '@' inside the password are hidden whole.
        ("mqtt://bar-1:s3#cr/et@x@broker", "mqtt://bar-1:***@broker"),
        ("input_value='mqtt://u:s3cret@h:12x', type", "input_value='mqtt://u:***@h:12x', type"),
        (
            "postgresql://db/festival?password=s3cret&x=1",
            "postgresql://db/festival?password=***&x=1",
        ),
        ("host=db password=s3cret user=festival", "host=db password=*** user=festival"),
        ("mqtt://bar-1:s3cret", "mqtt://bar-1:***"),  # no @host: not a port either
        # Nothing to hide.
        ("mqtt://::1:1883 and mqtt://[::1]:1883/", "mqtt://::1:1883 and mqtt://[::1]:1883/"),
        (
            "see https://errors.pydantic.dev/2.14/v/value_error",
            "see https://errors.pydantic.dev/2.14/v/value_error",
        ),
        ("mqtt://bar-1@broker:1883", "mqtt://bar-1@broker:1883"),
        ("mqtt://broker:1883", "mqtt://broker:1883"),
        ("no url here", "no url here"),
    ],
)
def test_redact_hides_the_password_only(text: str, expected: str) -> None:
    assert redact(text) == expected


@given(
    password=st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc"), blacklist_characters="'\""),
        min_size=4,
        max_size=40,
    )
)
def test_any_password_in_a_url_in_any_message_is_hidden(password: str) -> None:
    message = f"could not connect to mqtt://bar-1:{password}@broker.internal:1883 (refused)"
    # The whole line, not "the password is not in it": a password such as "conn" also stands in
    # "could not connect", and the rest of the line must come through unchanged.
    assert redact(message) == "could not connect to mqtt://bar-1:***@broker.internal:1883 (refused)"


@pytest.mark.parametrize(
    "url",
    [
        "mqtt://bar-1:s3cret-password",  # forgot @host: urllib reads the password as the port
        "mqtt://bar-1:s3cret-password@broker:99999",
        "mqtt://bar-1:s3cret-password#x@broker",
        "mqtt://bar-1:s3cret-password/x@broker",
        "http://bar-1:s3cret-password@broker",
        "mqtt://bar-1:s3cret-password@",
        "mqtt://bar-1:s3cret-password@[::1",
    ],
)
def test_malformed_mqtt_url_errors_name_the_variable_but_not_the_password(url: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_mqtt_url(url)
    message = str(raised.value)
    assert "MQTT_URL" in message
    assert "s3cret" not in message
    assert "bar-1:***" in message
