"""Shared fixtures: tiny models built once, a Prefect API for flow runs, and the Postgres catalog.

The suite is hermetic: before anything is imported it gets a Prefect home, a log file and a Ray
address setting of its own (none: every Ray instance a test starts is private), so neither the
user's ``~/.prefect`` nor a Ray cluster running on the host changes what it does. Its default preset
(``$MAGIC141_PRESET``) is the random ``tiny`` one, which builds in a second; the tests of the trained
``toy`` default name it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import PIL.Image
import psycopg
import pytest
from prefect_server import PrefectServer

from magic141.pipeline import Magic141Pipeline, fit_image
from magic141.prior import ImagePrior

SUITE_HOME = Path(tempfile.mkdtemp(prefix="magic141-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    """Private state for the whole run (set before Prefect reads its settings)."""
    os.environ["PREFECT_HOME"] = str(SUITE_HOME / "prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["MAGIC141_LOG_FILE"] = str(SUITE_HOME / "magic141.log")
    os.environ["MAGIC141_PRESET"] = "tiny"
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "RAY_ADDRESS"):
        os.environ.pop(name, None)

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_CONNINFO = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@pytest.fixture(scope="session")
def tiny_pipeline() -> Magic141Pipeline:
    return Magic141Pipeline.from_preset("tiny")


@pytest.fixture(scope="session")
def tiny_prior() -> ImagePrior:
    return ImagePrior.from_preset("tiny")


@pytest.fixture(scope="session")
def prior_image(tiny_prior: ImagePrior) -> PIL.Image.Image:
    preset = tiny_prior.preset
    return fit_image(tiny_prior("a lighthouse", seed=5), preset.width, preset.height)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    """The suite's own Prefect server process (``prefect server start``), used by every flow run of the session."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = PrefectServer(SUITE_HOME / "prefect-server", services=True)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            with _temporary_global_settings_context(get_settings_context()):
                yield server
                _drain_prefect_workers()
    finally:
        server.stop()


def _drain_prefect_workers() -> None:
    """Send the run logs and events still queued in this process before the server stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(RuntimeError):  # never started
        APILogWorker.instance().drain()
    EventsWorker.drain_all()


@pytest.fixture
def prefect_api(prefect_server: PrefectServer) -> PrefectServer:
    """The suite's Prefect server, checked before the test: if it died it is started again, and its log is shown."""
    if not prefect_server.alive():
        warnings.warn(f"the suite's Prefect server had stopped; starting it again. Its log:\n{prefect_server.log_tail()}",
                      stacklevel=1)
        prefect_server.stop()
        try:
            prefect_server.start()
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
    return prefect_server


@pytest.fixture(scope="session")
def postgres_problem() -> str | None:
    """None when the test PostgreSQL server answers, else why it does not."""
    try:
        with psycopg.connect(PG_CONNINFO, connect_timeout=2):
            return None
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"no PostgreSQL server answers at {PG_URL}: {first_line}"


@pytest.fixture
def pg_url(postgres_problem: str | None) -> Iterator[str]:
    """URL of a fresh PostgreSQL schema, dropped again after the test."""
    if postgres_problem is not None:
        pytest.skip(postgres_problem)
    schema = f"catalog_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Catalog URL of an empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("pg_url")


def _upgrade_schema(conn, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from tasks.catalog.store import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = conn
    command.upgrade(config, revision)


@pytest.fixture
def upgrade_schema():
    """``upgrade_schema(conn, revision)`` migrates the catalog schema on an open connection (upgrade tests)."""
    return _upgrade_schema
