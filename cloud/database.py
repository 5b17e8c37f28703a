"""The PostgreSQL adapter: engines, migrations, and the one place database errors are translated.

Callers get `TransientDatabaseError` for faults that a retry of the same transaction can cure
(serialization failure, deadlock, lost or refused connection, administrator shutdown, lock or
statement timeout, a full connection pool) and the original exception for everything else, which
is a bug or a misconfiguration and must not be retried blindly. Because every ledger procedure is
idempotent by its request id, retrying a transaction whose commit outcome is unknown is safe.

The only module of the cloud that imports SQLAlchemy and psycopg2 (tests/test_architecture.py;
Alembic's own env.py aside). The modules that hold our SQL (ledger.py, pos_devices.py,
api/queries.py, api/ratelimit.py) take `Engine`, `Connection`, `text` and `IntegrityError` from
here, so the driver, the engine's options and the error translation live in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy
from sqlalchemy import Connection as Connection
from sqlalchemy import Engine as Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy import text as text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError as IntegrityError

from cloud.settings import normalise_database_url

CONNECT_TIMEOUT_S: Final = 5
STATEMENT_TIMEOUT_MS: Final = 30_000
LOCK_TIMEOUT_MS: Final = 10_000
# Kill a session that holds locks while its client went silent (a consumer that froze mid-batch).
IDLE_IN_TRANSACTION_TIMEOUT_MS: Final = 60_000
POOL_TIMEOUT_S: Final = 10.0
POOL_RECYCLE_S: Final = 1800

# SQLSTATEs a retry can cure. Classes: 08 connection exception, 53 insufficient resources
# (too many connections, disk full: the operator's problem, not the request's).
TRANSIENT_SQLSTATES: Final = frozenset(
    {
        "40001",  # serialization_failure (also raised by our procedures for a lost claim race)
        "40P01",  # deadlock_detected
        "40003",  # statement_completion_unknown
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout, or an operator's pg_cancel_backend)
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, recovering)
        "25006",  # read_only_sql_transaction (we reached a standby during a failover)
    }
)
TRANSIENT_SQLSTATE_CLASSES: Final = frozenset({"08", "53"})


class TransientDatabaseError(Exception):
    """A database fault that a retry (after a backoff) may cure; nothing was committed
    by the failed attempt, or whatever was is harmless to repeat (idempotent procedures)."""


def make_engine(
    url: str, *, pool_size: int = 5, application_name: str = "festival", pre_ping: bool = True
) -> sqlalchemy.Engine:
    """An engine for the ledger: bounded pool, liveness checks, and timeouts on everything.

    ``pre_ping``: check each pooled connection with a round trip when it is checked out. The
    consumer turns it off: its every transaction is retried on a transient fault anyway (a
    connection found dead is `classify`'d transient, nothing having been committed on it), so
    the ping would only cost a round trip per transaction on the hot path (about 6 % of the
    consumer's CPU, profiled under load)."""
    options = " ".join(
        [
            f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            f"-c lock_timeout={LOCK_TIMEOUT_MS}",
            f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}",
        ]
    )
    return sqlalchemy.create_engine(
        normalise_database_url(url),
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT_S,
        pool_recycle=POOL_RECYCLE_S,
        pool_pre_ping=pre_ping,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": application_name[:63],
            "options": options,
            # Notice a dead server on an idle pooled connection within about half a minute.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        },
    )


def _sqlstate(error: BaseException) -> str | None:
    code = getattr(error, "pgcode", None) or getattr(error, "sqlstate", None)
    return code if isinstance(code, str) else None


def classify(error: BaseException) -> bool:
    """True when `error` is transient (retry the transaction), False when it is permanent."""
    if isinstance(error, TransientDatabaseError):
        return True
    if isinstance(error, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True  # the pool had no connection for us, or lost one
    original: BaseException = error
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if error.orig is not None:
            original = error.orig
    code = _sqlstate(original)
    if code is not None:
        return code in TRANSIENT_SQLSTATES or code[:2] in TRANSIENT_SQLSTATE_CLASSES
    # No SQLSTATE: the driver itself failed - cannot connect, connection closed, server gone.
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - the cloud extra always has it
        return False
    return isinstance(original, psycopg2.OperationalError | psycopg2.InterfaceError)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise transient database faults as TransientDatabaseError; let the rest through."""
    try:
        yield
    except TransientDatabaseError:
        raise
    except Exception as error:
        if classify(error):
            raise TransientDatabaseError(_describe(error)) from error
        raise


def hide_parameters(error: BaseException | None) -> None:
    """Leave a statement's parameters out of this error's message and its causes' (SQLAlchemy
    prints them otherwise): for a statement that carries a secret (a POS device's token)."""
    while error is not None:
        if isinstance(error, sa_exc.StatementError):
            error.hide_parameters = True
        error = error.__cause__


def _describe(error: BaseException) -> str:
    original = error.orig if isinstance(error, sa_exc.DBAPIError) and error.orig else error
    code = _sqlstate(original)
    text = str(original).strip().splitlines()[0] if str(original).strip() else type(original)
    return f"{type(original).__name__}{f' [{code}]' if code else ''}: {text}"


# --- migrations ------------------------------------------------------------------------------

MIGRATIONS_LOCATION: Final = "cloud:migrations"


def alembic_config(url: str):  # type: ignore[no-untyped-def]  # alembic.config.Config
    """Alembic's configuration for `url`, found from the installed package (not the CWD)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATIONS_LOCATION)
    config.set_main_option("path_separator", "os")
    # As an attribute, not a main option: a URL's %-escapes would break ConfigParser.
    config.attributes["database_url"] = normalise_database_url(url)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The database's revision, or None for an empty (base) database."""
    from alembic.runtime.migration import MigrationContext

    engine = sqlalchemy.create_engine(
        normalise_database_url(url),
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    try:
        with engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()
    return heads[0] if heads else None


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("postgresql://unused/")).get_current_head()
    assert head is not None
    return head


@dataclass(frozen=True, slots=True)
class ConnectionParameters:
    """What a URL names, for the PostgreSQL client programs (pg_dump) that take them apart."""

    host: str | None
    port: int | None
    username: str | None
    password: str | None = field(repr=False)
    database: str | None


def connection_parameters(url: str) -> ConnectionParameters:
    parsed = make_url(url)
    password = parsed.password
    return ConnectionParameters(
        host=parsed.host,
        port=parsed.port,
        username=parsed.username,
        password=str(password) if password else None,
        database=parsed.database,
    )


def service_url(url: str, role: str = "festival_service") -> str:
    """The same database's URL as the service role (tests and the demo; no password here)."""
    return (
        make_url(normalise_database_url(url))
        .set(username=role, password=None)
        .render_as_string(hide_password=False)
    )


# --- notifications and leadership (1.1: the consumer's publishing loop) -----------------------


class NotificationListener:
    """A connection of its own that LISTENs on ``channels`` and, with ``lock_key``, holds the
    session-level advisory lock naming one leader among the processes doing the same job (the
    publishing loops of several consumers): whoever holds the lock does the work, the others
    try again at every wait. The lock ends with the connection, so a consumer that dies hands
    over at once.

    Every method raises TransientDatabaseError when the server is away; the next call connects
    again (taken out of ``engine``'s pool and kept apart from it)."""

    def __init__(self, engine: Engine, channels: tuple[str, ...], lock_key: int | None) -> None:
        self._engine = engine
        self._channels = channels
        self._lock_key = lock_key
        self._connection: object | None = None
        self.leader = lock_key is None

    def _connect(self) -> object:
        fairy = self._engine.raw_connection()
        fairy.detach()  # ours for good: the pool neither recycles nor reuses it
        connection: Any = fairy.dbapi_connection
        assert connection is not None
        connection.autocommit = True
        with connection.cursor() as cursor:
            for channel in self._channels:
                cursor.execute(f'LISTEN "{channel}"')
        self.leader = self._lock_key is None
        return connection

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a notification (True: one arrived, the pending ones are
        consumed); first (re)connects and, when not the leader yet, tries to become it."""
        import select

        with translate_errors():
            try:
                if self._connection is None:
                    self._connection = self._connect()
                connection: Any = self._connection
                if not self.leader:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_key,))
                        self.leader = bool(cursor.fetchone()[0])
                connection.poll()
                if not connection.notifies:
                    readable, _, _ = select.select([connection], [], [], timeout_s)
                    if readable:
                        connection.poll()
                notified = bool(connection.notifies)
                connection.notifies.clear()
                return notified
            except Exception:
                self.close()
                raise

    def close(self) -> None:
        connection: Any = self._connection
        self._connection = None
        self.leader = self._lock_key is None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: S110 - already broken; nothing to release
                pass
