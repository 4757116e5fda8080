"""Tests of the SQL provenance catalog on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, delete, inspect, text
from sqlalchemy.exc import IntegrityError

from tasks.catalog import (
    CATALOG_URL_ENV,
    Catalog,
    CatalogError,
    default_catalog_url,
    open_catalog,
    redact,
    resolve_catalog_url,
    store,
)
from tasks.catalog.batches import set_row, start_batch
from tasks.catalog.index_builds import (
    get_index_build,
    mark_index_build_unchanged,
    publish_index_build,
    start_index_build,
)
from tasks.catalog.models import Base, BatchRow, Video, VideoWindow

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
UNREACHABLE_PG_URL = "postgresql+psycopg://postgres:hunter2@127.0.0.1:1/test"
HEAD = "0005"
_FIRST_REVISION_COLUMNS = (
    "prompt negative_prompt seed prior_source prior_image_path prior_image_sha256 preset "
    "weights_fingerprint steps guidance true_cfg seconds window_layout output_path output_sha256 "
    "output_bytes frames fps width height stage_timings flow_run_id library_versions"
).split()


def video_fields(n: int = 0, **overrides: Any) -> dict[str, Any]:
    """A complete, realistic set of video fields; n makes paths and hashes unique."""
    fields: dict[str, Any] = {
        "prompt": f"a red fox running through fresh snow, take {n}",
        "negative_prompt": "blurry, low quality",
        "seed": 2**40 + n,
        "prior_source": "generate",
        "prior_image_path": f"/data/out/prior_{n}.png",
        "prior_image_sha256": f"{n:064x}"[::-1],
        "preset": "h100-fast",
        "weights_fingerprint": "f" * 64,
        "steps": 4,
        "guidance": 3.5,
        "true_cfg": None,
        "seconds": 5.0,
        "window_layout": [
            {"start": 0, "frames": 21, "overlap": 0},
            {"start": 17, "frames": 21, "overlap": 4, "anchor": None},
        ],
        "output_path": f"/data/out/video_{n}.mp4",
        "output_sha256": f"{n:064x}",
        "output_bytes": 3 * 2**31 + n,
        "frames": 121,
        "fps": 24,
        "width": 1280,
        "height": 720,
        "stage_timings": {"encode_prompt": 0.42, "denoise": 12.5, "decode": 3.25},
        "flow_run_id": "0b6f6c2e-3d1f-4a51-9f55-6a8c1d2e3f40",
        "library_versions": {"torch": "2.13.0", "diffusers": "0.42.1"},
        "windows_mode": "parallel",
        "content_key": f"c{n:063x}",
        "prior_details": {"retrieved": [{"path": "corpus/a.jpg", "score": 0.31}]},
        "model_details": {"weights": "/models/student", "prompt_format": "magic141",
                          "distillation": {"kind": "dmd2", "teacher_fingerprint": "ab" * 32, "steps": 4}},
        "thumbnail_path": f"/data/out/video_{n}.jpg",
        "batch_id": None,
    }
    fields.update(overrides)
    return fields


def assert_one_line(exc: CatalogError) -> str:
    message = str(exc)
    assert message and "\n" not in message
    return message


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    with open_catalog(catalog_url) as opened:
        yield opened


def test_row_round_trips_every_field(catalog: Catalog) -> None:
    fields = video_fields()
    before = datetime.now(UTC)
    video_id = catalog.add_video(**fields)
    after = datetime.now(UTC)

    row = catalog.get_video(video_id)

    assert len(video_id) == 32 and int(video_id, 16) >= 0
    created_at = datetime.fromisoformat(row.pop("created_at"))
    assert created_at.tzinfo is not None and created_at.utcoffset().total_seconds() == 0
    assert before <= created_at <= after
    assert row == {"id": video_id, **fields}
    json.dumps(row)


def test_nullable_fields_may_be_left_out(catalog: Catalog) -> None:
    fields = video_fields()
    for name in ("negative_prompt", "guidance", "true_cfg", "flow_run_id"):
        del fields[name]

    row = catalog.get_video(catalog.add_video(**fields))

    assert (
        row["negative_prompt"] is row["guidance"] is row["true_cfg"] is row["flow_run_id"] is None
    )


def test_paths_are_stored_as_strings(catalog: Catalog) -> None:
    fields = video_fields(output_path=Path("/data/out/a.mp4"), prior_image_path=Path("p.png"))

    row = catalog.get_video(catalog.add_video(**fields))

    assert row["output_path"] == "/data/out/a.mp4" and row["prior_image_path"] == "p.png"


def test_numpy_numbers_are_stored_as_python_numbers(catalog: Catalog) -> None:
    fields = video_fields(
        seed=np.int64(7), frames=np.int32(121), seconds=np.float32(2.5), guidance=3
    )

    row = catalog.get_video(catalog.add_video(**fields))

    assert (row["seed"], row["frames"], row["seconds"], row["guidance"]) == (7, 121, 2.5, 3.0)
    assert [type(row[k]) for k in ("seed", "frames", "seconds", "guidance")] == [
        int,
        int,
        float,
        float,
    ]
    json.dumps(row)


def test_list_is_newest_first(catalog: Catalog) -> None:
    ids = [catalog.add_video(**video_fields(n)) for n in range(4)]

    listed = catalog.list_videos()

    assert [row["id"] for row in listed] == ids[::-1]
    stamps = [datetime.fromisoformat(row["created_at"]) for row in listed]
    assert stamps == sorted(stamps, reverse=True)
    assert [row["id"] for row in catalog.list_videos(limit=2)] == ids[:1:-1]
    assert catalog.list_videos(limit=0) == []
    json.dumps(listed)


def test_list_rejects_negative_limit(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="limit") as info:
        catalog.list_videos(limit=-1)
    assert_one_line(info.value)


def test_lookup_by_unique_prefix(catalog: Catalog) -> None:
    ids = [catalog.add_video(**video_fields(n)) for n in range(40)]
    target = ids[7]
    shortest = next(
        target[:k] for k in range(1, 33) if sum(i.startswith(target[:k]) for i in ids) == 1
    )

    assert catalog.get_video(target)["id"] == target
    assert catalog.get_video(shortest)["id"] == target
    assert catalog.get_video(f"  {shortest.upper()} ")["id"] == target


def test_ambiguous_prefix_is_an_error(catalog: Catalog) -> None:
    ids = [catalog.add_video(**video_fields(n)) for n in range(40)]
    # 40 ids over 16 leading hex digits: some first digit is shared.
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)

    with pytest.raises(CatalogError, match="ambiguous id prefix") as info:
        catalog.get_video(shared)
    message = assert_one_line(info.value)
    assert "more characters" in message


@pytest.mark.parametrize("missing", ["0" * 32, "nothex", "0" * 33, ""])
def test_missing_id_is_an_error(catalog: Catalog, missing: str) -> None:
    catalog.add_video(**video_fields())

    with pytest.raises(CatalogError, match="no video with id") as info:
        catalog.get_video(missing)
    assert_one_line(info.value)


def test_empty_catalog_lists_nothing(catalog: Catalog) -> None:
    assert catalog.list_videos() == []
    with pytest.raises(CatalogError, match="no video with id"):
        catalog.get_video("abc")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"id": "0" * 32}, "unknown or read-only field"),
        ({"created_at": datetime.now(UTC)}, "unknown or read-only field"),
        ({"colour": "red"}, "unknown or read-only field"),
        ({"prompt": None}, "required field"),
        ({"prior_source": "camera"}, "prior_source 'camera' is invalid"),
        ({"seed": "123"}, "seed must be an int, got str"),
        ({"steps": True}, "steps must be an int, got bool"),
        ({"frames": 2**40}, "frames 1099511627776 does not fit a 32-bit integer"),
        ({"seed": 2**63}, "does not fit a 64-bit integer"),
        ({"seconds": "5"}, "seconds must be a float"),
        ({"prompt": b"fox"}, "prompt must be a str"),
        ({"window_layout": {"start": 0}}, "window_layout must be a list"),
        ({"stage_timings": [1.0]}, "stage_timings must be a dict"),
    ],
)
def test_bad_fields_are_rejected(catalog: Catalog, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(CatalogError, match=match) as info:
        catalog.add_video(**video_fields(**overrides))
    assert_one_line(info.value)
    assert catalog.list_videos() == []


def test_missing_required_field_is_rejected(catalog: Catalog) -> None:
    fields = video_fields()
    del fields["output_sha256"]

    with pytest.raises(CatalogError, match="required field.*output_sha256") as info:
        catalog.add_video(**fields)
    assert_one_line(info.value)


def test_duplicate_output_path_is_rejected(catalog: Catalog) -> None:
    first = catalog.add_video(**video_fields(1))

    with pytest.raises(CatalogError, match="already catalogued") as info:
        catalog.add_video(**video_fields(2, output_path=video_fields(1)["output_path"]))
    assert first in assert_one_line(info.value)
    assert [row["id"] for row in catalog.list_videos()] == [first]


def test_closed_catalog_refuses_work(catalog_url: str) -> None:
    catalog = open_catalog(catalog_url)
    catalog.close()
    catalog.close()

    with pytest.raises(CatalogError, match="is closed") as info:
        catalog.list_videos()
    assert_one_line(info.value)


def test_fresh_database_is_migrated_once(
    catalog_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tasks.catalog")
    with open_catalog(catalog_url) as catalog:
        video_id = catalog.add_video(**video_fields())
    assert f"migrated from empty to {HEAD}" in caplog.text
    caplog.clear()

    with open_catalog(catalog_url) as catalog:
        assert [row["id"] for row in catalog.list_videos()] == [video_id]
    assert "migrated" not in caplog.text

    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {
                "alembic_version",
                "videos",
                "video_windows",
                "index_builds",
                "batches",
                "batch_rows",
            }
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(HEAD,)]
            indexes = {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("videos")}
            assert indexes["ix_videos_created_at"] == ["created_at"]
            assert indexes["ix_videos_output_sha256"] == ["output_sha256"]
    finally:
        engine.dispose()


def test_migrated_schema_matches_models(catalog_url: str) -> None:
    open_catalog(catalog_url).close()

    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diffs == []


def test_upgrade_from_first_revision_keeps_videos(catalog_url: str, upgrade_schema) -> None:
    engine = create_engine(catalog_url)
    try:
        with engine.begin() as conn:
            upgrade_schema(conn, "0001")
            old = {k: v for k, v in video_fields(3).items() if k in _FIRST_REVISION_COLUMNS}
            old["window_layout"] = json.dumps(old["window_layout"])
            old["stage_timings"] = json.dumps(old["stage_timings"])
            old["library_versions"] = json.dumps(old["library_versions"])
            columns = ", ".join(old)
            values = ", ".join(f":{name}" for name in old)
            conn.execute(
                text(
                    f"INSERT INTO videos (id, created_at, {columns}) "
                    f"VALUES ('ab0cd', :created, {values})"
                ),
                {**old, "created": datetime.now(UTC)},
            )
    finally:
        engine.dispose()

    with open_catalog(catalog_url) as catalog:
        row = catalog.get_video("ab0cd")
    assert row["windows_mode"] == "chained"
    assert row["content_key"] is None and row["batch_id"] is None
    assert row["output_path"] == video_fields(3)["output_path"]


def test_concurrent_thread_adds_lose_no_rows(catalog: Catalog) -> None:
    threads, per_thread = 8, 20
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def add(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                catalog.add_video(**video_fields(t * 1000 + i))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=add, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    rows = catalog.list_videos()
    assert len(rows) == len({row["id"] for row in rows}) == threads * per_thread


def test_concurrent_first_open_from_threads(catalog_url: str) -> None:
    threads, per_thread = 6, 5
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def open_and_add(t: int) -> None:
        try:
            start.wait()
            with open_catalog(catalog_url) as catalog:
                for i in range(per_thread):
                    catalog.add_video(**video_fields(t * 1000 + i))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=open_and_add, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    with open_catalog(catalog_url) as catalog:
        assert len(catalog.list_videos()) == threads * per_thread


def test_threads_opening_different_catalogs_at_once(tmp_path: Path) -> None:
    threads = 8
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def open_and_add(t: int) -> None:
        try:
            start.wait()
            with open_catalog(f"sqlite:///{tmp_path / f'catalog_{t}.db'}") as catalog:
                catalog.add_video(**video_fields(t))
                assert len(catalog.list_videos()) == 1
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=open_and_add, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []


def _open_and_add_in_process(url: str, start: Any, worker: int, count: int) -> None:
    start.wait()
    with open_catalog(url) as catalog:
        for i in range(count):
            catalog.add_video(**video_fields(worker * 1000 + i))


def test_concurrent_first_open_from_processes(catalog_url: str) -> None:
    processes, per_process = 6, 10
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    workers = [
        context.Process(target=_open_and_add_in_process, args=(catalog_url, start, p, per_process))
        for p in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert [worker.exitcode for worker in workers] == [0] * processes
    with open_catalog(catalog_url) as catalog:
        rows = catalog.list_videos()
    assert len({row["output_path"] for row in rows}) == len(rows) == processes * per_process


@pytest.mark.parametrize("url", ["foo", "", "postgresql://postgres:hunter2@h:notaport/db"])
def test_malformed_url_is_an_error(url: str) -> None:
    with pytest.raises(CatalogError, match="is malformed") as info:
        open_catalog(url)
    message = assert_one_line(info.value)
    assert "sqlite:///out/catalog.db" in message and "postgresql+psycopg://" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root@localhost/db",
        "postgresql+psycopg2://u@h/db",
        "sqlite://",
        "sqlite:///:memory:",
    ],
)
def test_unsupported_url_is_an_error(url: str) -> None:
    with pytest.raises(CatalogError, match="use") as info:
        open_catalog(url)
    assert_one_line(info.value)


def test_unreachable_server_is_a_short_error() -> None:
    began = time.monotonic()
    with pytest.raises(CatalogError) as info:
        open_catalog(UNREACHABLE_PG_URL, wait_s=0)
    message = assert_one_line(info.value)

    assert time.monotonic() - began < 10
    assert message.startswith(
        "cannot reach catalog at postgresql+psycopg://postgres:***@127.0.0.1:1/test: "
    )
    assert message.endswith("check the server is running and the URL")
    assert "hunter2" not in message


def test_url_without_driver_uses_psycopg(pg_url: str) -> None:
    with open_catalog(pg_url.replace("postgresql+psycopg://", "postgresql://")) as catalog:
        video_id = catalog.add_video(**video_fields())
        assert catalog._engine is not None and catalog._engine.dialect.driver == "psycopg"
        assert catalog.get_video(video_id)["id"] == video_id


def test_missing_sqlite_folder_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing' / 'deeper' / 'catalog.db'}"

    with pytest.raises(CatalogError, match="does not exist") as info:
        open_catalog(url)

    assert str(tmp_path / "missing" / "deeper") in assert_one_line(info.value)
    assert list(tmp_path.iterdir()) == []


def test_sqlite_file_that_is_not_a_database_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(CatalogError, match="cannot open SQLite catalog") as info:
        open_catalog(f"sqlite:///{path}")
    assert_one_line(info.value)


def test_sqlite_relative_url_and_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()

    with open_catalog("sqlite:///out/catalog.db") as catalog:
        catalog.add_video(**video_fields())

    engine = create_engine(f"sqlite:///{tmp_path / 'out' / 'catalog.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_default_catalog_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    assert default_catalog_url(Path("out")) == f"sqlite:///{tmp_path.resolve()}/out/catalog.db"
    assert default_catalog_url(tmp_path).startswith("sqlite:////")


def test_resolve_catalog_url_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CATALOG_URL_ENV, raising=False)
    assert resolve_catalog_url(None, tmp_path) == default_catalog_url(tmp_path)

    monkeypatch.setenv(CATALOG_URL_ENV, PG_URL)
    assert resolve_catalog_url(None, tmp_path) == PG_URL
    assert resolve_catalog_url("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://u:s3cret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql://u:s3cret@h:notaport/db", "postgresql://u:***@h:notaport/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////tmp/catalog.db", "sqlite:////tmp/catalog.db"),
    ],
)
def test_redact_hides_passwords(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_library_imports_neither_prefect_nor_ray() -> None:
    code = (
        "import sys, tasks.catalog, tasks.catalog.store, tasks.catalog.models; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'ray')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def window_record(index: int) -> dict[str, Any]:
    return {
        "window_index": index, "frame_start": 20 * index, "frame_end": 20 * index + 21, "latent_start": 5 * index,
        "latent_end": 5 * index + 6, "actor": "render-0", "node": "gpu-node-1", "gpu_id": "0", "seconds": 1.5,
        "attempts": 1,
    }


def add_referenced_video(catalog: Catalog) -> tuple[str, str]:
    """A batch, a video of that batch with two windows, and the batch row that made it: (batch id, video id)."""
    batch_id = start_batch(catalog, csv_path="/data/prompts.csv", csv_sha256="c" * 64, out_dir="/data/out")
    video_id = catalog.add_video(windows=[window_record(0), window_record(1)], **video_fields(batch_id=batch_id))
    set_row(catalog, batch_id, 2, "done", video_id=video_id, attempts=1)
    return batch_id, video_id


def assert_dangling_rows_refused(catalog: Catalog) -> None:
    with pytest.raises(IntegrityError):
        with catalog.session("add a window", write=True) as session:
            session.add(VideoWindow(video_id="0" * 32, **window_record(0)))
    with pytest.raises(IntegrityError):
        with catalog.session("add a batch row", write=True) as session:
            session.add(BatchRow(batch_id="f" * 32, row_number=2, status="pending", attempts=0))
    with pytest.raises(CatalogError, match=r"batch 'b0' is not in catalog .*; start the batch before adding") as info:
        catalog.add_video(**video_fields(1, batch_id="b0"))
    assert_one_line(info.value)


def test_references_to_missing_rows_are_refused(catalog: Catalog) -> None:
    batch_id, video_id = add_referenced_video(catalog)

    assert_dangling_rows_refused(catalog)
    with catalog.session("hold a connection") as held:
        held.execute(text("SELECT 1"))
        assert_dangling_rows_refused(catalog)  # on another connection than the one that opened the catalog

    assert [row["id"] for row in catalog.list_videos()] == [video_id]
    assert catalog.video_windows(video_id) == [window_record(0), window_record(1)]
    with catalog.session("count windows") as session:
        assert session.scalar(text("SELECT count(*) FROM video_windows")) == 2


def test_deleting_a_video_deletes_its_windows(catalog: Catalog) -> None:
    kept = catalog.add_video(windows=[window_record(0)], **video_fields(1))
    doomed = catalog.add_video(windows=[window_record(0), window_record(1)], **video_fields(2))

    with catalog.session("delete a video", write=True) as session:
        session.execute(delete(Video).where(Video.id == doomed))

    assert catalog.video_windows(doomed) == [] and catalog.video_windows(kept) == [window_record(0)]


@pytest.fixture
def extra_migration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make the catalog's migrations end with a revision 9001 whose ``upgrade()`` runs the given body."""

    def add(body: str) -> None:
        folder = tmp_path / "migrations"
        shutil.copytree(store.MIGRATIONS_DIR, folder, ignore=shutil.ignore_patterns("__pycache__"))
        source = textwrap.dedent(
            f"""
            import sqlalchemy as sa
            from alembic import op

            revision = "9001"
            down_revision = "{HEAD}"
            branch_labels = None
            depends_on = None


            def upgrade():
            {{body}}
            """
        ).replace("{body}", textwrap.indent(textwrap.dedent(body), "    "))
        (folder / "versions" / "9001_test.py").write_text(source)
        monkeypatch.setattr(store, "MIGRATIONS_DIR", folder)

    return add


def revision_of(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()


def test_a_migration_that_rebuilds_referenced_tables_keeps_the_rows_referring_to_them(
    catalog_url: str, extra_migration: Callable[[str], None]
) -> None:
    with open_catalog(catalog_url) as catalog:
        batch_id, video_id = add_referenced_video(catalog)
    # On SQLite a table rebuild copies the table and drops the original: with foreign keys
    # enforced, that drop would delete the video's windows and be refused for its batch row.
    extra_migration(
        """
        recreate = "always" if op.get_bind().dialect.name == "sqlite" else "auto"
        for table in ("videos", "batches"):
            with op.batch_alter_table(table, recreate=recreate) as batch:
                batch.add_column(sa.Column("note", sa.Text(), nullable=True))
        """
    )

    with open_catalog(catalog_url) as catalog:
        assert catalog.video_windows(video_id) == [window_record(0), window_record(1)]
        assert catalog.get_video(video_id)["batch_id"] == batch_id
        with catalog.session("read a batch row") as session:
            assert session.scalar(text("SELECT video_id FROM batch_rows")) == video_id
        with pytest.raises(IntegrityError):
            with catalog.session("add a window", write=True) as session:
                session.add(VideoWindow(video_id="0" * 32, **window_record(5)))
    assert revision_of(catalog_url) == "9001"


def test_a_migration_that_would_leave_dangling_references_is_rolled_back(
    catalog_url: str, extra_migration: Callable[[str], None]
) -> None:
    with open_catalog(catalog_url) as catalog:
        batch_id, video_id = add_referenced_video(catalog)
    extra_migration('op.execute("DELETE FROM batches")')

    with pytest.raises(CatalogError) as info:
        open_catalog(catalog_url)

    message = assert_one_line(info.value)
    if catalog_url.startswith("sqlite"):
        assert "would leave rows that refer to missing rows (1 in batch_rows -> batches, 1 in videos -> batches)" \
            in message and "rolled back" in message
    assert revision_of(catalog_url) == HEAD
    engine = create_engine(catalog_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id FROM batches")).scalars().all() == [batch_id]
            assert conn.execute(text("SELECT count(*) FROM batch_rows")).scalar_one() == 1
    finally:
        engine.dispose()


def test_old_sqlite_catalog_with_dangling_rows_still_opens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, upgrade_schema
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)  # no foreign-key enforcement, as catalogs were written before
    try:
        with engine.begin() as conn:
            upgrade_schema(conn, "0002")
            values = {**window_record(0), "video_id": "0" * 32}
            conn.execute(
                text(f"INSERT INTO video_windows ({', '.join(values)}) VALUES ({', '.join(':' + k for k in values)})"),
                values,
            )
    finally:
        engine.dispose()

    with open_catalog(url) as catalog:
        assert catalog.video_windows("0" * 32) == [window_record(0)], "kept, not deleted by the upgrade"
    assert "1 in video_windows -> videos" in caplog.text and revision_of(url) == HEAD


def test_unchanged_index_builds_name_the_version_another_build_made(catalog: Catalog) -> None:
    def start(version: str) -> str:
        return start_index_build(catalog, version=version, corpus="/corpus", index_dir="/index", model_id="m")

    made = start("v1")
    publish_index_build(catalog, made, dimension=64, count=9, embedded=9, skipped=[], index_type="flat", recall=1.0,
                        duration_s=2.0)
    for fresh in ("v2", "v3"):
        mark_index_build_unchanged(catalog, start(fresh), version="v1", dimension=64, count=9, skipped=[],
                                   index_type="flat", recall=1.0, duration_s=0.5)

    assert get_index_build(catalog, "v1")["id"] == made
    with pytest.raises(IntegrityError):
        start("v1")  # one build makes each version
    with pytest.raises(CatalogError, match="no index build of version 'v2'"):
        get_index_build(catalog, "v2")
