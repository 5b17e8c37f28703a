"""Request tracing, the error shape, body limits over a real socket, and JSON log lines."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud.api.middleware import new_request_id
from cloud.ledger import Ledger
from cloud.logs import JsonFormatter
from cloud.stripe_fake import checkout_session_completed_event
from tests.api.conftest import POS_TOKEN, PostEvent, pos_headers
from tests.api.live import serve
from tests.api.stripe_helpers import our_paid_session

UUID7 = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def log_lines() -> Iterator[list[dict[str, object]]]:
    handler = ListHandler()
    logger = logging.getLogger("cloud")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(previous)


def test_generated_request_ids_are_time_ordered_uuid7() -> None:
    first, second = new_request_id(), new_request_id()
    assert UUID7.match(first) and UUID7.match(second) and first != second
    assert first[:8] <= second[:8]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),
        ("A.b_c:d-1", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("has space", False),
        ("", False),
        ("semi;colon", False),
        ("<script>", False),
    ],
)
def test_x_request_id_is_kept_only_when_well_formed(
    client: TestClient, sent: str, kept: bool
) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": sent})
    returned = response.headers["x-request-id"]
    assert (returned == sent) is kept
    if not kept:
        assert UUID7.match(returned)


def test_every_response_carries_a_request_id_and_errors_have_one_shape(client: TestClient) -> None:
    for method, path, status in (
        ("GET", "/nowhere", 404),
        ("DELETE", "/healthz", 405),
        ("GET", "/api/monitoring/kiosks", 401),
        ("POST", "/api/topups/checkout", 415),
    ):
        response = client.request(method, path)
        assert response.status_code == status
        body = response.json()
        assert set(body) == {"error", "error_code", "request_id"}
        assert body["request_id"] == response.headers["x-request-id"]
    assert client.get("/metrics").headers["x-request-id"]
    assert client.get("/static/dashboard.js").headers["x-request-id"]


def test_log_lines_of_a_request_carry_its_request_id(
    client: TestClient, post_event: PostEvent, log_lines: list[dict[str, object]], ledger: Ledger
) -> None:
    # A session this API created (issue 11: only those are credited).
    session = our_paid_session(ledger, "04A1B2C3", 700, payment_intent="pi_3Logged")
    post_event(checkout_session_completed_event(session), headers={"X-Request-ID": "log-trace-1"})
    client.post(
        "/functions/v1/process-bar-order",
        json={"card_id": "04A1B2C3", "items": [], "total_amount": 0, "client_request_id": "x"},
        headers=pos_headers(**{"X-Request-ID": "log-trace-2"}),
    )
    traced = [
        line for line in log_lines if line.get("request_id") in ("log-trace-1", "log-trace-2")
    ]
    events = {(line["request_id"], line["event"]) for line in traced}
    assert ("log-trace-1", "stripe top-up") in events
    assert ("log-trace-1", "request") in events
    assert ("log-trace-2", "pos request invalid") in events
    assert ("log-trace-2", "request") in events
    # Nothing the API logged during those requests lacks its request id.
    assert all("request_id" in line for line in log_lines if line["logger"] != "cloud.api.metrics")
    request_line = next(
        line
        for line in traced
        if line["event"] == "request" and line["request_id"] == "log-trace-1"
    )
    assert request_line["status"] == 200 and request_line["route"] == "/stripe/webhook"
    assert request_line["outcome"] == "processed"
    assert request_line["stripe_event_type"] == "checkout.session.completed"
    assert isinstance(request_line["duration_ms"], float)
    topup_line = next(line for line in traced if line["event"] == "stripe top-up")
    assert (
        topup_line["card_uid"] == "04A1B2C3"
        and topup_line["stripe_event_type"] == "checkout.session.completed"
    )


def _raw_http(base_url: str, request: bytes) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        chunks = []
        while True:
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_body_limits_hold_on_a_real_socket_with_and_without_content_length(app: FastAPI) -> None:
    with serve(app) as base_url:
        declared = _raw_http(
            base_url,
            b"POST /api/topups/checkout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\nConnection: close\r\n\r\n{",
        )
        assert declared.startswith(b"HTTP/1.1 413")
        assert b"x-request-id:" in declared.lower()
        # Chunked: no length announced, the limit is counted while reading.
        chunk = b"a" * 32768
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)) + b"0\r\n\r\n"
        chunked = _raw_http(
            base_url,
            b"POST /functions/v1/process-bar-order HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + POS_TOKEN.encode() + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + body,
        )
        assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
        assert b"PAYLOAD_TOO_LARGE" in chunked
        non_ascii_token = _raw_http(
            base_url,
            b"GET /api/monitoring/kiosks HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer \xc3\xa9\xff\r\nConnection: close\r\n\r\n",
        )
        assert non_ascii_token.startswith(b"HTTP/1.1 401")
        bad_request_id = _raw_http(
            base_url,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: \xff\xfe\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert bad_request_id.startswith(b"HTTP/1.1 200")
