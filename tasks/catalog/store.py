"""Open, migrate and query the provenance catalog."""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
import re
import sqlite3
import time
import threading
from collections import Counter
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
    JSON,
    BigInteger,
    Engine,
    Float,
    Integer,
    String,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from tasks.catalog.models import PRIOR_SOURCES, Batch, Video, VideoWindow

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
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)[^/\s]*@")
_ID_PREFIX = re.compile(r"[0-9a-f]{1,32}")
_AMBIGUOUS_SHOWN = 5
_COLUMNS = tuple(Video.__table__.columns.keys())
_SETTABLE = frozenset(_COLUMNS) - {"id", "created_at"}
_REQUIRED = (
    frozenset(
        column.key
        for column in Video.__table__.columns
        if not column.nullable and column.default is None
    )
    & _SETTABLE
)
_JSON_SHAPES = {
    "window_layout": list,
    "stage_timings": dict,
    "library_versions": dict,
    "prior_details": dict,
    "model_details": dict,
}


class CatalogError(Exception):
    """A catalog problem, told in one line that names it and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _short_reason(exc: BaseException) -> str:
    """First line of the driver's message, without SQLAlchemy's SQL echo."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    lines = [line.strip() for line in str(orig or exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


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
                    f"cannot open SQLite catalog {shown}: {_short_reason(exc)}; "
                    f"check the file is a readable and writable SQLite database"
                ) from exc
            left = deadline - time.monotonic()
            if not _unreachable(exc) or left <= 0:
                waited = f" (waited {wait_s:g} s)" if wait_s and _unreachable(exc) else ""
                raise CatalogError(
                    f"cannot reach catalog at {shown}{waited}: {_short_reason(exc)}; "
                    f"check the server is running and the URL"
                ) from exc
            pause = min(delay, left)
            logger.warning("catalog at %s unreachable (%s); trying again in %.1f s, for %.0f s more",
                           shown, _short_reason(exc), pause, left)
            time.sleep(pause)
            delay = min(2 * delay, OUTAGE_MAX_DELAY_S)


def open_catalog(url: str, wait_s: float | None = None) -> Catalog:
    """Open the catalog at url, creating or upgrading its tables on first use.

    A catalog server that cannot be reached is waited for, up to ``wait_s`` seconds (None:
    :func:`catalog_wait`), so a short database outage delays the work instead of failing it.
    """
    shown = redact(url)
    parsed = _parse_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        _check_sqlite_path(parsed, shown)
    wait = catalog_wait() if wait_s is None else wait_s
    engine = _create_engine(parsed)
    try:
        connection = _connect(engine, shown, is_sqlite, wait)
        with connection:
            try:
                before, after = _migrate(connection)
            except SQLAlchemyError as exc:
                raise CatalogError(
                    f"cannot create or upgrade the catalog tables at {shown}: "
                    f"{_short_reason(exc)}; check the account may create tables there"
                ) from exc
    except BaseException:
        engine.dispose()
        raise
    if before != after:
        logger.info("catalog %s migrated from %s to %s", shown, before or "empty", after)
    logger.debug("opened catalog %s", shown)
    return Catalog(engine, shown)


def _coerce(name: str, value: Any) -> Any:
    """Return value as column name's Python type; raise ValueError saying why it does not fit."""
    column_type = Video.__table__.columns[name].type
    if isinstance(column_type, JSON):
        shape = _JSON_SHAPES[name]
        if not isinstance(value, shape):
            raise ValueError(f"{name} must be a {shape.__name__}, got {type(value).__name__}")
        return value
    if isinstance(column_type, Integer):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
        bits = 64 if isinstance(column_type, BigInteger) else 32
        if not -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1):
            raise ValueError(f"{name} {value} does not fit a {bits}-bit integer")
        return int(value)
    if isinstance(column_type, Float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a float, got {type(value).__name__}")
        return float(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")
    return value


def _video_values(fields: dict[str, Any]) -> dict[str, Any]:
    """Check caller-supplied video fields and normalise numbers and paths."""
    unknown = sorted(set(fields) - _SETTABLE)
    if unknown:
        raise CatalogError(
            f"cannot add video: unknown or read-only field(s) {', '.join(unknown)}; "
            f"pass only {', '.join(sorted(_SETTABLE))}"
        )
    missing = sorted(name for name in _REQUIRED if fields.get(name) is None)
    if missing:
        raise CatalogError(
            f"cannot add video: required field(s) {', '.join(missing)} missing or None; "
            f"pass a value for each"
        )
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in fields.items():
        try:
            values[name] = None if value is None else _coerce(name, value)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise CatalogError(f"cannot add video: {'; '.join(problems)}; fix those values")
    if values["prior_source"] not in PRIOR_SOURCES:
        raise CatalogError(
            f"cannot add video: prior_source {values['prior_source']!r} is invalid; "
            f"pass one of {', '.join(PRIOR_SOURCES)}"
        )
    return values


_WINDOW_FIELDS = tuple(name for name in VideoWindow.__table__.columns.keys() if name not in ("id", "video_id"))


def _window_values(number: int, window: dict[str, Any]) -> dict[str, Any]:
    """Check one window record: exactly the window fields, of the right types."""
    if set(window) != set(_WINDOW_FIELDS):
        missing = sorted(set(_WINDOW_FIELDS) - set(window))
        unknown = sorted(set(window) - set(_WINDOW_FIELDS))
        raise CatalogError(
            f"cannot add video: window {number} has missing field(s) {missing} and unknown field(s) {unknown}; "
            f"pass exactly {', '.join(_WINDOW_FIELDS)}"
        )
    values: dict[str, Any] = {}
    for name, value in window.items():
        column_type = VideoWindow.__table__.columns[name].type
        if value is None and VideoWindow.__table__.columns[name].nullable:
            values[name] = None
        elif isinstance(column_type, Integer) and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            values[name] = int(value)
        elif isinstance(column_type, Float) and isinstance(value, numbers.Real) and not isinstance(value, bool):
            values[name] = float(value)
        elif isinstance(column_type, String) and isinstance(value, str):
            values[name] = value
        else:
            raise CatalogError(
                f"cannot add video: window {number} field {name} has the wrong type ({type(value).__name__}); "
                f"fix the window record"
            )
    return values


def video_as_dict(video: Video) -> dict[str, Any]:
    """A video row as a JSON-ready dict: every column, ``created_at`` in ISO 8601."""
    row = {name: getattr(video, name) for name in _COLUMNS}
    row["created_at"] = video.created_at.isoformat()
    return row


class Catalog:
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
        """Release the catalog's database connections."""
        if self._engine is not None:
            self._engine.dispose()
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
                f"cannot {action} in catalog {self.url}: {_short_reason(exc)}; "
                f"check the database is reachable and the values are valid"
            ) from exc

    def add_video(self, *, windows: list[dict[str, Any]] | None = None, **fields: Any) -> str:
        """Insert one video row, and its windows' rows, in one transaction; return the video's new id."""
        values = _video_values(fields)
        window_rows = [_window_values(number, window) for number, window in enumerate(windows or [])]
        try:
            with self._session("add a video", write=True) as session:
                video = Video(**values)
                session.add(video)
                session.flush()
                video_id = video.id
                session.add_all(VideoWindow(video_id=video_id, **row) for row in window_rows)
        except IntegrityError as exc:
            raise self._integrity_error(values, exc) from exc
        logger.info("catalogued video %s at %s", video_id, values["output_path"])
        return video_id

    def _integrity_error(self, values: dict[str, Any], exc: IntegrityError) -> CatalogError:
        with self._session("look up a video") as session:
            existing = session.scalar(
                select(Video.id).where(Video.output_path == values["output_path"])
            )
        if existing is not None:
            return CatalogError(
                f"output path {values['output_path']!r} is already catalogued as video "
                f"{existing}; write the new video to another path"
            )
        if values.get("content_key") is not None:
            with self._session("look up a video") as session:
                same_content = session.scalar(
                    select(Video.id).where(Video.content_key == values["content_key"])
                )
            if same_content is not None:
                return CatalogError(
                    f"content key {values['content_key']} is already catalogued as video "
                    f"{same_content}; reuse that video instead of adding another"
                )
        batch_id = values.get("batch_id")
        if batch_id is not None:
            with self._session("look up a batch") as session:
                batch_exists = session.get(Batch, batch_id) is not None
            if not batch_exists:
                return CatalogError(
                    f"batch {batch_id!r} is not in catalog {self.url}; start the batch before adding "
                    f"its videos, or leave batch_id out"
                )
        return CatalogError(
            f"cannot add video to catalog {self.url}: {_short_reason(exc)}; check the field values"
        )

    def video_windows(self, video_id: str) -> list[dict[str, Any]]:
        """The windows recorded for a video (exact id), in window order."""
        with self._session("list a video's windows") as session:
            rows = session.scalars(
                select(VideoWindow).where(VideoWindow.video_id == video_id).order_by(VideoWindow.window_index)
            ).all()
            return [{name: getattr(row, name) for name in _WINDOW_FIELDS} for row in rows]

    def get_video(self, id_or_prefix: str) -> dict[str, Any]:
        """Return the video whose id is, or uniquely starts with, id_or_prefix."""
        prefix = id_or_prefix.strip().lower()
        if not _ID_PREFIX.fullmatch(prefix):
            raise CatalogError(
                f"no video with id {id_or_prefix!r}: ids are 1 to 32 hex characters; "
                f"list the catalog to find the id"
            )
        with self._session("look up a video") as session:
            matches = session.scalars(
                select(Video)
                .where(Video.id.startswith(prefix, autoescape=True))
                .order_by(Video.id)
                .limit(_AMBIGUOUS_SHOWN + 1)
            ).all()
            rows = [video_as_dict(video) for video in matches]
        if not rows:
            raise CatalogError(
                f"no video with id {id_or_prefix!r} in catalog {self.url}; "
                f"list the catalog to find the id"
            )
        if len(rows) > 1:
            shown = ", ".join(row["id"] for row in rows[:_AMBIGUOUS_SHOWN])
            more = ", ..." if len(rows) > _AMBIGUOUS_SHOWN else ""
            raise CatalogError(
                f"ambiguous id prefix {prefix!r} matches {shown}{more}; "
                f"give more characters of the id"
            )
        return rows[0]

    def list_videos(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Return videos newest first, at most limit of them."""
        if limit is not None and limit < 0:
            raise CatalogError(
                f"list limit must be 0 or more, got {limit}; pass None for all videos"
            )
        with self._session("list videos") as session:
            videos = session.scalars(
                select(Video).order_by(Video.created_at.desc(), Video.id.desc()).limit(limit)
            ).all()
            return [video_as_dict(video) for video in videos]
