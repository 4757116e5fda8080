"""Shared fixtures: tiny models built once, a Prefect API for flow runs, and the Postgres catalog."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import PIL.Image
import psycopg
import pytest

from magic141.pipeline import Magic141Pipeline, fit_image
from magic141.prior import ImagePrior

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
def prefect_api():
    """A real, temporary Prefect server and database for the flow runs of the session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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
