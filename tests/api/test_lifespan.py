"""The API's lifespan (issue 12 section 6): when it ends, the engine the app built is disposed and
no connection of the API is left in PostgreSQL. /docs is not served (it loads from a CDN)."""

from __future__ import annotations

from sqlalchemy import Engine, text

from cloud.api import create_app
from cloud.api.app import API_APPLICATION_NAME
from cloud.settings import CloudSettings
from tests.api.conftest import LOOPBACK_PEER, TEST_LIMITS
from tests.waiting import wait_until


def api_connections(owner_engine: Engine) -> int:
    with owner_engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": API_APPLICATION_NAME},
            ).scalar_one()
        )


def test_the_lifespan_disposes_the_engine_the_app_built(
    settings: CloudSettings, owner_engine: Engine
) -> None:
    from fastapi.testclient import TestClient

    app = create_app(settings, limits=TEST_LIMITS)  # builds its own engine (festival-api)
    engine = app.state.services.ledger.engine
    with TestClient(app, client=LOOPBACK_PEER) as client:
        assert client.get("/readyz").status_code == 200
        assert engine.pool.checkedin() >= 1
        assert api_connections(owner_engine) >= 1
    assert engine.pool.checkedin() == 0
    wait_until(lambda: api_connections(owner_engine) == 0, timeout_s=10, what="no API session")


def test_no_page_loads_scripts_from_a_cdn_and_the_openapi_document_stays(client: object) -> None:
    """/docs (Swagger UI) and /redoc fetch their scripts from a CDN: not served. The OpenAPI
    document schemathesis and client generators read is."""
    from fastapi.testclient import TestClient

    assert isinstance(client, TestClient)
    for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
        assert client.get(path).status_code == 404, path
    document = client.get("/openapi.json")
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.")
    for path in ("/topup", "/dashboard"):
        page = client.get(path)
        assert "cdn.jsdelivr.net" not in page.text and "unpkg.com" not in page.text, path
