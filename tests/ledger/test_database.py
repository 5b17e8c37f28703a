"""The adapter: engines, and transient vs permanent errors produced by a real server."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy import exc as sa_exc

from cloud.database import TransientDatabaseError, classify, make_engine, translate_errors
from cloud.sandbox import free_port


def _fail_with(url: str, sql: str) -> BaseException:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(sql))
    except Exception as error:
        return error
    finally:
        engine.dispose()
    raise AssertionError(f"{sql!r} did not fail")


def test_make_engine_accepts_plain_postgresql_urls(database_url: str) -> None:
    plain = database_url.replace("postgresql+psycopg2://", "postgresql://")
    engine = make_engine(plain, application_name="adapter-test")
    try:
        with engine.connect() as connection:
            settings = connection.execute(
                sqlalchemy.text(
                    "SELECT current_setting('statement_timeout'), "
                    "current_setting('lock_timeout'), current_setting('application_name')"
                )
            ).one()
    finally:
        engine.dispose()
    assert tuple(settings) == ("30s", "10s", "adapter-test")


@pytest.mark.parametrize(
    "sql",
    [
        "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'serialization_failure'; END $$",
        "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'deadlock_detected'; END $$",
        "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'admin_shutdown'; END $$",
        "DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'lock_not_available'; END $$",
        "SET LOCAL statement_timeout = 10; SELECT pg_sleep(1)",
    ],
)
def test_transient_server_errors(database_url: str, sql: str) -> None:
    error = _fail_with(database_url, sql)
    assert classify(error) is True
    with pytest.raises(TransientDatabaseError):
        with translate_errors():
            raise error


@pytest.mark.parametrize(
    "sql",
    [
        "SELEC 1",
        "SELECT 1/0",
        "SELECT sp_process_batch('{}')",
        "INSERT INTO accounts (kind, name) VALUES ('card', 'card:X'), ('card', 'card:X')",
    ],
)
def test_permanent_errors_pass_through(database_url: str, sql: str) -> None:
    error = _fail_with(database_url, sql)
    assert classify(error) is False
    with pytest.raises(type(error)):
        with translate_errors():
            raise error


def test_cannot_connect_is_transient() -> None:
    engine = make_engine(f"postgresql://nobody@127.0.0.1:{free_port()}/none")
    try:
        with pytest.raises(TransientDatabaseError), translate_errors():
            with engine.connect():
                pass
    finally:
        engine.dispose()


def test_terminated_connection_is_transient(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as victim:
            pid = victim.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()
            killer = sqlalchemy.create_engine(database_url, poolclass=sqlalchemy.pool.NullPool)
            with killer.connect() as connection:
                connection.execute(sqlalchemy.text(f"SELECT pg_terminate_backend({pid})"))
            killer.dispose()
            with pytest.raises(TransientDatabaseError), translate_errors():
                victim.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()


def test_pool_exhaustion_is_transient() -> None:
    assert classify(sa_exc.TimeoutError("QueuePool limit reached")) is True
    assert classify(ValueError("a bug")) is False
