"""Open and migrate the provenance catalog: URLs, engines (one per URL and process), sessions."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from tasks.catalog.errors import CatalogError, short_reason
from tasks.catalog.videos import VideoQueries

logger = logging.getLogger(__name__)

CATALOG_URL_ENV = "MAGIC141_CATALOG_URL"
CATALOG_WAIT_ENV = "MAGIC141_CATALOG_WAIT"
CATALOG_WAIT_S = 120.0  # how long an opening waits for an unreachable catalog server, unless told otherwise
OUTAGE_FIRST_DELAY_S = 0.5
OUTAGE_MAX_DELAY_S = 10.0
_SERVER_NOT_READY = ("the database system is starting up", "the database system is shutting down",
                     "the database system is in recovery mode")
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
PG_CONNECT_TIMEOUT_S = 5
SQLITE_BUSY_TIMEOUT_MS = 30_000

_URL_EXAMPLES = "sqlite:///out/catalog.db or postgresql+psycopg://user@127.0.0.1:5432/db"
_PG_MIGRATION_LOCK_KEY = int.from_bytes(
    hashlib.blake2b(b"tasks.catalog migrations", digest_size=8).digest(), "big", signed=True
)
# Alembic's context/op proxies are process-global, so one upgrade runs at a time per process.
_ALEMBIC_LOCK = threading.Lock()
_WRITE_OPTION = "catalog_write"
# Engines by (process, URL, migrations folder), most recently opened last: each one's schema was checked against
# those migrations when it was made.
_ENGINES: OrderedDict[tuple[int, str, str], tuple[Engine, tuple[int, int] | None]] = OrderedDict()
_ENGINES_LOCK = threading.Lock()
_CACHED_ENGINES = 4
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^/\s]*@")


def redact(url: str | URL) -> str:
    """Return the URL with any password replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD_IN_URL.sub(r"\1***@", url)


def has_password(url: str) -> bool:
    """Whether the catalog URL carries a password (a malformed URL is checked by :func:`open_catalog`)."""
    try:
        return make_url(url).password is not None
    except (ArgumentError, ValueError):
        return _PASSWORD_IN_URL.search(url) is not None


def hide_password(url: str | None) -> Any:
    """``url`` as a flow parameter: a ``SecretStr`` when it carries a password, so run parameters keep none.

    Prefect stores a ``SecretStr`` parameter as ``**********``; the flow unwraps it with :func:`plain_url`.
    """
    if url is None or not has_password(url):
        return url
    from pydantic import SecretStr

    return SecretStr(url)


def plain_url(url: Any) -> str | None:
    """The catalog URL a flow was given: a string, a ``SecretStr`` or a Prefect ``Secret`` block holding it."""
    if url is None or isinstance(url, str):
        return url
    if hasattr(url, "get_secret_value"):
        return url.get_secret_value()
    return plain_url(url.get())


def default_catalog_url(out_dir: Path) -> str:
    """SQLite catalog inside the output folder."""
    return f"sqlite:///{(Path(out_dir).resolve() / 'catalog.db').as_posix()}"


def resolve_catalog_url(explicit: str | None, out_dir: Path) -> str:
    """Pick the catalog URL: explicit, else $MAGIC141_CATALOG_URL, else the default."""
    if explicit:
        return explicit
    from_env = os.environ.get(CATALOG_URL_ENV)
    if from_env:
        return from_env
    return default_catalog_url(out_dir)


def _parse_url(url: str) -> URL:
    shown = redact(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        reason = "expected backend[+driver]://[user[:password]@][host[:port]]/database"
        raise CatalogError(
            f"catalog URL {shown!r} is malformed: {reason}; use e.g. {_URL_EXAMPLES}"
        ) from None
    except ValueError as exc:
        raise CatalogError(
            f"catalog URL {shown!r} is malformed: {exc}; use e.g. {_URL_EXAMPLES}"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise CatalogError(
                f"catalog URL {shown!r} uses SQLite driver {driver!r}, which the catalog "
                f"does not support; use sqlite:///path/to/catalog.db"
            )
        if parsed.database in (None, "", ":memory:"):
            raise CatalogError(
                f"catalog URL {shown!r} names no database file and an in-memory catalog "
                f"would be lost on exit; use e.g. sqlite:///out/catalog.db"
            )
        return parsed
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise CatalogError(
                f"catalog URL {shown!r} uses PostgreSQL driver {driver!r}, which the catalog "
                f"does not support; use postgresql+psycopg:// (psycopg 3)"
            )
        return parsed.set(drivername="postgresql+psycopg")
    raise CatalogError(
        f"catalog URL {shown!r} uses unsupported database {backend!r}; "
        f"use SQLite or PostgreSQL, e.g. {_URL_EXAMPLES}"
    )


def _check_sqlite_path(url: URL, shown: str) -> None:
    path = Path(url.database or "")
    folder = path.parent.absolute()
    if not folder.is_dir():
        raise CatalogError(
            f"folder {str(folder)!r} for SQLite catalog {shown!r} does not exist; "
            f"create it first or choose another catalog URL"
        )
    if path.exists() and not path.is_file():
        raise CatalogError(
            f"SQLite catalog path {str(path.absolute())!r} exists but is not a file; "
            f"choose another catalog URL"
        )


def _sqlite_on_connect(dbapi_connection: Any, _connection_record: Any) -> None:
    # Let SQLAlchemy's "begin" hook emit BEGIN so DDL stays inside transactions.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        # SQLite enforces foreign keys only when asked to, per connection (PostgreSQL always does).
        cursor.execute("PRAGMA foreign_keys = ON")
        _enable_wal(cursor)
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Switch to WAL; SQLite reports a concurrent switch as "locked" without waiting, so retry."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _sqlite_on_begin(connection: Connection) -> None:
    # Writers take the write lock up front so they queue on busy_timeout instead of failing.
    write = connection.get_execution_options().get(_WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args = (
        {} if "connect_timeout" in url.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    )
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


@contextmanager
def _sqlite_foreign_keys_off(connection: Connection) -> Iterator[None]:
    """Suspend SQLite's foreign-key enforcement on ``connection`` (call outside a transaction).

    Alembic's batch mode rebuilds a SQLite table by copying it and dropping the original; with
    enforcement on, that drop would delete (ON DELETE CASCADE) or refuse the rows that refer to
    it. :func:`_check_no_new_dangling` stands in for the enforcement while it is off.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.driver_connection
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys = ON")


def _dangling_references(connection: Connection) -> Counter[tuple[str, str]]:
    """Rows whose foreign key names a missing row, counted by (table, referenced table); SQLite only."""
    if connection.dialect.name != "sqlite":
        return Counter()
    rows = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    return Counter((str(row[0]), str(row[2])) for row in rows)


def _check_no_new_dangling(connection: Connection, before: Counter[tuple[str, str]], revision: str | None) -> None:
    """Refuse (roll back) a migration that left rows referring to missing rows."""
    if before:
        logger.warning(
            "catalog has rows that refer to missing rows, written before foreign keys were enforced: %s",
            ", ".join(f"{count} in {table} -> {parent}" for (table, parent), count in sorted(before.items())),
        )
    new = _dangling_references(connection) - before
    if new:
        shown = ", ".join(f"{count} in {table} -> {parent}" for (table, parent), count in sorted(new.items()))
        raise CatalogError(
            f"migrating the catalog to revision {revision} would leave rows that refer to missing rows "
            f"({shown}); it was rolled back, so the catalog is unchanged; report this as a bug in the migration"
        )


def _migrate(connection: Connection) -> tuple[str | None, str | None]:
    """Upgrade to head under a cross-process lock; return (revision before, after).

    On SQLite the upgrade runs with foreign-key enforcement suspended, and is rolled back if it
    leaves more dangling references than there were before it.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    head = ScriptDirectory.from_config(config).get_current_head()
    with _ALEMBIC_LOCK, _sqlite_foreign_keys_off(connection), connection.begin():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY}
            )
        before = MigrationContext.configure(connection).get_current_revision()
        if before == head:
            return before, before
        dangling = _dangling_references(connection)
        command.upgrade(config, "head")
        after = MigrationContext.configure(connection).get_current_revision()
        _check_no_new_dangling(connection, dangling, after)
    return before, after


def catalog_wait() -> float:
    """Seconds an opening waits for an unreachable catalog server: ``$MAGIC141_CATALOG_WAIT``, else 120."""
    value = os.environ.get(CATALOG_WAIT_ENV)
    if not value:
        return CATALOG_WAIT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise CatalogError(f"${CATALOG_WAIT_ENV} is {value!r}; give the seconds to wait for the catalog, e.g. 120")
    return seconds


def _unreachable(exc: DBAPIError) -> bool:
    """Whether a server database refused a connection because it is down, starting or unreachable. A server
    that answers with an error (a wrong password, a missing database) is not waited for: waiting will not help."""
    message = str(exc.orig or exc)
    return "FATAL:" not in message or any(state in message for state in _SERVER_NOT_READY)


def _connect(engine: Engine, shown: str, is_sqlite: bool, wait_s: float) -> Connection:
    """A write connection; a server database that cannot be reached is tried again with a growing delay
    (from half a second, at most ten) for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    delay = OUTAGE_FIRST_DELAY_S
    while True:
        try:
            return engine.connect().execution_options(**{_WRITE_OPTION: True})
        except DBAPIError as exc:
            if is_sqlite:
                raise CatalogError(
                    f"cannot open SQLite catalog {shown}: {short_reason(exc)}; "
                    f"check the file is a readable and writable SQLite database"
                ) from exc
            left = deadline - time.monotonic()
            if not _unreachable(exc) or left <= 0:
                waited = f" (waited {wait_s:g} s)" if wait_s and _unreachable(exc) else ""
                raise CatalogError(
                    f"cannot reach catalog at {shown}{waited}: {short_reason(exc)}; "
                    f"check the server is running and the URL"
                ) from exc
            pause = min(delay, left)
            logger.warning("catalog at %s unreachable (%s); trying again in %.1f s, for %.0f s more",
                           shown, short_reason(exc), pause, left)
            time.sleep(pause)
            delay = min(2 * delay, OUTAGE_MAX_DELAY_S)


def _database_identity(url: URL) -> tuple[int, int] | None:
    """The SQLite file's (device, inode), so that a file replaced or removed is checked again; None for a server."""
    if url.get_backend_name() != "sqlite":
        return None
    try:
        status = os.stat(url.database or "")
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _engine_key(url: str) -> tuple[int, str, str]:
    return os.getpid(), url, str(MIGRATIONS_DIR)


def _cached_engine(url: str, identity: tuple[int, int] | None) -> Engine | None:
    with _ENGINES_LOCK:
        cached = _ENGINES.get(_engine_key(url))
        if cached is None or cached[1] != identity:
            return None
        _ENGINES.move_to_end(_engine_key(url))
        return cached[0]


def _cache_engine(url: str, engine: Engine, identity: tuple[int, int] | None) -> None:
    """Keep ``engine`` for ``url``; the least recently opened engines beyond :data:`_CACHED_ENGINES` are released
    (a catalog still using one gets new connections on its next session)."""
    with _ENGINES_LOCK:
        replaced = _ENGINES.pop(_engine_key(url), None)
        _ENGINES[_engine_key(url)] = (engine, identity)
        released = [replaced[0]] if replaced else []
        while len(_ENGINES) > _CACHED_ENGINES:
            released.append(_ENGINES.popitem(last=False)[1][0])
    for old in released:
        old.dispose()


def open_catalog(url: str, wait_s: float | None = None) -> Catalog:
    """Open the catalog at url, creating or upgrading its tables on first use.

    The engine is kept per URL and process: its schema is checked once, later openings only check that
    the database answers. A catalog server that cannot be reached is waited for, up to ``wait_s`` seconds
    (None: :func:`catalog_wait`), so a short database outage delays the work instead of failing it.
    """
    shown = redact(url)
    parsed = _parse_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        _check_sqlite_path(parsed, shown)
    wait = catalog_wait() if wait_s is None else wait_s
    identity = _database_identity(parsed)
    engine = _cached_engine(url, identity) if identity is not None or not is_sqlite else None
    if engine is not None:
        _connect(engine, shown, is_sqlite, wait).close()
        return Catalog(engine, shown)
    engine = _create_engine(parsed)
    try:
        connection = _connect(engine, shown, is_sqlite, wait)
        with connection:
            try:
                before, after = _migrate(connection)
            except SQLAlchemyError as exc:
                raise CatalogError(
                    f"cannot create or upgrade the catalog tables at {shown}: "
                    f"{short_reason(exc)}; check the account may create tables there"
                ) from exc
    except BaseException:
        engine.dispose()
        raise
    if before != after:
        logger.info("catalog %s migrated from %s to %s", shown, before or "empty", after)
    logger.debug("opened catalog %s", shown)
    _cache_engine(url, engine, _database_identity(parsed))
    return Catalog(engine, shown)


class Catalog(VideoQueries):
    """Handle on one catalog database; safe to share between threads.

    ``url`` is the catalog URL with any password hidden.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine: Engine | None = engine
        self._writer = engine.execution_options(**{_WRITE_OPTION: True})
        self.url = url

    def __repr__(self) -> str:
        return f"Catalog({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close this handle; the engine stays with :func:`open_catalog` for the next opening of the URL."""
        self._engine = None

    def session(self, action: str, *, write: bool = False) -> AbstractContextManager[Session]:
        """One transaction for modules that keep their own catalog tables (batches, index builds).

        ``action`` completes "cannot ... in catalog" in error messages. ``write=True`` takes
        SQLite's write lock up front. Database errors become :class:`CatalogError`, except
        ``IntegrityError``, which is re-raised so callers can resolve a lost insert race.
        """
        return self._session(action, write=write)

    @contextmanager
    def _session(self, action: str, *, write: bool = False) -> Iterator[Session]:
        if self._engine is None:
            raise CatalogError(f"catalog {self.url} is closed; open it again with open_catalog()")
        try:
            with Session(self._writer if write else self._engine) as session, session.begin():
                yield session
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise CatalogError(
                f"cannot {action} in catalog {self.url}: {short_reason(exc)}; "
                f"check the database is reachable and the values are valid"
            ) from exc
