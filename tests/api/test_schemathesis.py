"""Property-based HTTP testing of the whole OpenAPI document with schemathesis (CLI, against
the app served by uvicorn on loopback, real PostgreSQL behind it): no 5xx anywhere, and every
answer conforms to the document (status codes, content types, response schemas)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI

from tests.api.conftest import ADMIN_TOKEN, POS_TOKEN
from tests.api.live import serve

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES_PER_OPERATION = 30
RUN_TIMEOUT_S = 90
# Operations whose input rules go beyond what a JSON Schema can say, so "schema-valid but
# refused" is correct there: a Stripe signature over the body, the seed bodies' total = sum of
# items, the page form's free text, and our refusal of 1047.0 where an integer is required
# (JSON Schema calls it an integer; PROTOCOL.md does not); and the attendee portal's routes,
# which need its CSRF header or a session cookie (a PIN login) that no schema can produce.
SEMANTIC_PATHS = r"^/(stripe/webhook|functions/v1/.*|topup|api/topups/checkout|api/portal/.*)$"
# (issue 17 section 4) Admin routes with the same integer rule (a drawer count of 4990.0 is refused
# like every amount): run with the admin token, without that one check.
ADMIN_SEMANTIC_PATHS = r"^/api/shifts/close$"


def run_schemathesis(base_url: str, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{base_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        "20251126",
        # One worker: with several threads, CPython 3.11.7 sometimes raises "SystemError: AST
        # constructor recursion depth mismatch" inside hypothesis (python/cpython#106905).
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        *extra,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(app: FastAPI) -> None:
    with serve(app) as base_url:
        admin = run_schemathesis(
            base_url,
            ADMIN_TOKEN,
            "--exclude-path-regex",
            f"{SEMANTIC_PATHS}|{ADMIN_SEMANTIC_PATHS}",
        )
        assert admin.returncode == 0, admin.stdout[-6000:]
        admin_semantic = run_schemathesis(
            base_url,
            ADMIN_TOKEN,
            "--include-path-regex",
            ADMIN_SEMANTIC_PATHS,
            "--exclude-checks",
            "positive_data_acceptance",
        )
        assert admin_semantic.returncode == 0, admin_semantic.stdout[-6000:]
        assert "Tested: 1\n" in admin_semantic.stdout, admin_semantic.stdout[-2000:]
        # Ten operations or more were exercised (20 with the portal's page).
        assert re.search(r"Tested: [1-9][0-9]\b", admin.stdout), admin.stdout[-2000:]
        semantic = run_schemathesis(
            base_url,
            POS_TOKEN,
            "--include-path-regex",
            SEMANTIC_PATHS,
            "--exclude-checks",
            "positive_data_acceptance",
        )
        assert semantic.returncode == 0, semantic.stdout[-6000:]
        # 12 with the portal's payout (POST /api/portal/payout).
        assert "Tested: 12" in semantic.stdout, semantic.stdout[-2000:]
        assert " passed" in semantic.stdout
