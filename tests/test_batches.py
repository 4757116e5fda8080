"""Bulk batches in the catalog on SQLite and PostgreSQL: row lifecycles, counts, export, and concurrent writers."""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tasks.catalog import Catalog, CatalogError, open_catalog
from tasks.catalog.batches import (
    RowRecord,
    add_rows,
    close_interrupted_batch,
    finish_batch,
    get_batch,
    list_rows,
    set_row,
    start_batch,
)
from tasks.catalog.models import BatchRow, VideoWindow


def video_fields(n: int, key: str | None = None, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": f"prompt {n}", "seed": n, "prior_source": "generate",
        "prior_image_path": f"/out/{n}.prior.png", "prior_image_sha256": "a" * 64, "preset": "tiny",
        "weights_fingerprint": "f" * 64, "steps": 4, "guidance": 6.0, "seconds": 1.0,
        "window_layout": [{"start": 0, "keep": 24}], "output_path": f"/out/{n}.mp4", "output_sha256": "b" * 64,
        "output_bytes": 1000 + n, "frames": 24, "fps": 24, "width": 64, "height": 48, "stage_timings": {"total": 1.0},
        "library_versions": {"torch": "2"}, "content_key": key if key is not None else f"{n:064x}",
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    with open_catalog(catalog_url) as opened:
        yield opened


def new_batch(catalog: Catalog, name: str = "prompts.csv") -> str:
    return start_batch(catalog, csv_path=f"/data/{name}", csv_sha256="c" * 64, out_dir="/out", flow_run_id="run-1")


def test_batch_lifecycle_and_counts(catalog: Catalog) -> None:
    batch_id = new_batch(catalog)
    started = get_batch(catalog, batch_id)
    assert (started["status"], started["counts"], started["finished_at"]) == ("running", None, None)
    assert started["csv_path"] == "/data/prompts.csv" and started["flow_run_id"] == "run-1"

    new = add_rows(catalog, batch_id, [
        RowRecord(2, "fox", content_key="k2"), RowRecord(3, "boat", content_key="k3"),
        RowRecord(4, "wall", content_key="k4"), RowRecord(5, "bad", "rejected", "seconds must be > 0, got 0.0"),
        RowRecord(6, "spare"),
    ])
    assert new == 5
    made, created = catalog.add_video_once(**video_fields(2, "k2"))
    assert created
    set_row(catalog, batch_id, 2, "done", video_id=made, attempts=1, seconds=3.5)
    existing, _ = catalog.add_video_once(**video_fields(3, "k3"))
    set_row(catalog, batch_id, 3, "skipped", video_id=existing)
    failed = set_row(catalog, batch_id, 4, "failed", reason="ray actor died", attempts=3, seconds=9.0)
    assert (failed["status"], failed["reason"], failed["attempts"], failed["row_key"]) == ("failed", "ray actor died", 3, "wall")

    finished = finish_batch(catalog, batch_id)

    assert finished["status"] == "done" and finished["finished_at"] >= finished["started_at"]
    assert finished["counts"] == {"pending": 1, "done": 1, "skipped": 1, "failed": 1, "rejected": 1, "total": 5}
    assert get_batch(catalog, batch_id)["counts"] == finished["counts"]
    (done,) = list_rows(catalog, status="done")
    assert (done["row_number"], done["video_id"], done["seconds"], done["csv_path"]) == (2, made, 3.5, "/data/prompts.csv")
    assert [row["reason"] for row in list_rows(catalog, status="rejected")] == ["seconds must be > 0, got 0.0"]
    assert [row["row_number"] for row in list_rows(catalog, batch_id=batch_id)] == [2, 3, 4, 5, 6]
    json.dumps(list_rows(catalog))


def test_interrupted_batch_is_closed_with_what_became_of_each_row(catalog: Catalog) -> None:
    batch_id = start_batch(catalog, csv_path="/data/p.csv", csv_sha256="c" * 64, out_dir="/out", batch_id="ab" * 16)
    other = new_batch(catalog, "other.csv")
    assert batch_id == "ab" * 16
    add_rows(catalog, batch_id, [
        RowRecord(2, "made-here", content_key="k2"), RowRecord(3, "made-elsewhere", content_key="k3"),
        RowRecord(4, "unfinished", content_key="k4"), RowRecord(5, "bad", "rejected", "seconds must be > 0"),
        RowRecord(6, "retrying", content_key="k6"),
    ])
    mine, _ = catalog.add_video_once(**video_fields(2, "k2", batch_id=batch_id))
    theirs, _ = catalog.add_video_once(**video_fields(3, "k3", batch_id=other))
    set_row(catalog, batch_id, 6, "failed", reason="ray actor died", attempts=1)

    reason = "interrupted: process 4242 on node-a is no longer running; run the CSV again"
    closed = close_interrupted_batch(catalog, batch_id, reason)

    assert closed is not None and closed["status"] == "interrupted" and closed["finished_at"]
    assert closed["counts"] == {"pending": 0, "done": 1, "skipped": 1, "failed": 2, "rejected": 1, "total": 5}
    rows = {row["row_key"]: row for row in list_rows(catalog, batch_id=batch_id)}
    assert (rows["made-here"]["status"], rows["made-here"]["video_id"]) == ("done", mine)
    assert (rows["made-elsewhere"]["status"], rows["made-elsewhere"]["video_id"]) == ("skipped", theirs)
    assert (rows["unfinished"]["status"], rows["unfinished"]["reason"]) == ("failed", reason)
    assert rows["retrying"]["reason"] == "ray actor died", "rows that already failed keep their error"
    assert close_interrupted_batch(catalog, batch_id, "again") is None, "a closed batch is left as it is"
    assert get_batch(catalog, batch_id) == closed
    assert get_batch(catalog, other)["status"] == "running", "other batches are not touched"
    assert close_interrupted_batch(catalog, "0" * 32, reason) is None


def test_interrupted_batch_with_nothing_left_unmade_ends_as_its_rows_say(catalog: Catalog) -> None:
    batch_id = new_batch(catalog)
    add_rows(catalog, batch_id, [RowRecord(2, "a", content_key="k2"), RowRecord(3, "b", content_key="k3")])
    catalog.add_video_once(**video_fields(2, "k2", batch_id=batch_id))
    set_row(catalog, batch_id, 3, "failed", reason="ray actor died", attempts=3)

    closed = close_interrupted_batch(catalog, batch_id, "interrupted: the run stopped")

    assert closed is not None and closed["status"] == "failed", "a row failed on its own; none was cut short"


def test_batches_of_a_0003_catalog_can_end_interrupted_after_the_upgrade(catalog_url: str, upgrade_schema) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(catalog_url)
    try:
        with engine.begin() as conn:
            upgrade_schema(conn, "0003")
            conn.execute(text(
                "INSERT INTO batches (id, started_at, csv_path, csv_sha256, out_dir, status) "
                "VALUES (:id, CURRENT_TIMESTAMP, '/p.csv', :sha, '/out', 'running')"
            ), {"id": "cd" * 16, "sha": "c" * 64})
    finally:
        engine.dispose()

    with open_catalog(catalog_url) as catalog:
        add_rows(catalog, "cd" * 16, [RowRecord(2, "unfinished", content_key="k2")])
        closed = close_interrupted_batch(catalog, "cd" * 16, "interrupted: the run stopped")
    assert closed is not None and closed["status"] == "interrupted"


def test_interrupted_batch_whose_rows_were_all_made_is_done(catalog: Catalog) -> None:
    batch_id = new_batch(catalog)
    add_rows(catalog, batch_id, [RowRecord(2, "a", content_key="k2")])
    catalog.add_video_once(**video_fields(2, "k2", batch_id=batch_id))

    closed = close_interrupted_batch(catalog, batch_id, "interrupted: the run stopped")

    assert closed is not None and closed["status"] == "done" and closed["counts"]["done"] == 1


def test_video_is_found_by_its_output_path(catalog: Catalog) -> None:
    video_id, _ = catalog.add_video_once(**video_fields(1))
    assert catalog.find_video_by_output("/out/1.mp4")["id"] == video_id
    assert catalog.find_video_by_output("/out/2.mp4") is None


def test_adding_rows_again_keeps_what_was_recorded(catalog: Catalog) -> None:
    batch_id = new_batch(catalog)
    add_rows(catalog, batch_id, [RowRecord(2, "a"), RowRecord(3, "b")])
    video_id, _ = catalog.add_video_once(**video_fields(1))
    set_row(catalog, batch_id, 2, "done", video_id=video_id)

    assert add_rows(catalog, batch_id, [RowRecord(2, "a"), RowRecord(3, "b"), RowRecord(4, "c")]) == 1

    rows = list_rows(catalog, batch_id=batch_id)
    assert [(row["row_number"], row["status"]) for row in rows] == [(2, "done"), (3, "pending"), (4, "pending")]


def test_final_rows_keep_their_first_outcome(catalog: Catalog) -> None:
    batch_id = new_batch(catalog)
    first, _ = catalog.add_video_once(**video_fields(1))
    second, _ = catalog.add_video_once(**video_fields(2))
    set_row(catalog, batch_id, 2, "done", video_id=first)

    again = set_row(catalog, batch_id, 2, "done", video_id=second)
    assert again["video_id"] == first, "the first writer wins"
    with pytest.raises(CatalogError, match="row 2 of batch .* is already done; it cannot become failed") as info:
        set_row(catalog, batch_id, 2, "failed", reason="late failure")
    assert "\n" not in str(info.value)


def test_failed_row_can_succeed_later(catalog: Catalog) -> None:
    batch_id = new_batch(catalog)
    set_row(catalog, batch_id, 7, "failed", row_key="x", reason="out of memory", attempts=3)
    video_id, _ = catalog.add_video_once(**video_fields(1))

    row = set_row(catalog, batch_id, 7, "done", video_id=video_id, attempts=4)

    assert (row["status"], row["reason"], row["video_id"], row["attempts"], row["row_key"]) == ("done", None, video_id, 4, "x")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c, b: set_row(c, b, 2, "finished"), "row status 'finished' is invalid"),
        (lambda c, b: set_row(c, b, 0, "pending"), "row number must be an int >= 1"),
        (lambda c, b: set_row(c, b, 2, "done"), "a done row needs the id of its video"),
        (lambda c, b: set_row(c, b, 2, "skipped"), "a skipped row needs the id of its video"),
        (lambda c, b: set_row(c, b, 2, "failed"), "a failed row needs a reason"),
        (lambda c, b: set_row(c, b, 2, "rejected"), "a rejected row needs a reason"),
        (lambda c, b: set_row(c, "0" * 32, 2, "pending"), "no batch '0+' in the catalog"),
        (lambda c, b: set_row(c, b, 2, "done", video_id="f" * 32), "no video 'f+' in the catalog"),
        (lambda c, b: add_rows(c, b, [RowRecord(2, "a", "done")]), "rows start pending or rejected"),
        (lambda c, b: add_rows(c, "0" * 32, [RowRecord(2, "a")]), "no batch"),
        (lambda c, b: finish_batch(c, b, "running"), "a batch finishes done or failed"),
        (lambda c, b: close_interrupted_batch(c, b, ""), "an interrupted batch needs a reason"),
        (lambda c, b: list_rows(c, status="lost"), "row status 'lost' is invalid"),
        (lambda c, b: c.add_video_once(**video_fields(1, key="")), "needs a content_key"),
    ],
)
def test_bad_calls_are_one_line_errors_and_write_nothing(catalog: Catalog, call: Any, match: str) -> None:
    batch_id = new_batch(catalog)
    with pytest.raises(CatalogError, match=match) as info:
        call(catalog, batch_id)
    assert "\n" not in str(info.value)
    assert list_rows(catalog) == [] and catalog.list_videos() == []


def test_one_video_per_content_key(catalog: Catalog) -> None:
    assert catalog.find_video("k") is None
    first, created = catalog.add_video_once(**video_fields(1, "k"))
    again, created_again = catalog.add_video_once(**video_fields(2, "k"))

    assert (created, created_again, again) == (True, False, first)
    assert catalog.find_video("k")["output_path"] == "/out/1.mp4"
    assert len(catalog.list_videos()) == 1
    with pytest.raises(CatalogError, match=f"already catalogued as video {first}"):
        catalog.add_video(**video_fields(3, "k"))


def test_export_has_windows_and_the_row_that_made_each_video(catalog: Catalog) -> None:
    batch_id = new_batch(catalog)
    ids = [catalog.add_video_once(**video_fields(n))[0] for n in range(5)]
    with catalog.session("add windows", write=True) as session:
        for index in (1, 0):
            session.add(VideoWindow(
                video_id=ids[3], window_index=index, frame_start=index * 20, frame_end=index * 20 + 24,
                latent_start=index * 5, latent_end=index * 5 + 7, actor="RenderActor-0", node="node-a",
                gpu_id="0", seconds=1.5, attempts=1,
            ))
    set_row(catalog, batch_id, 2, "done", video_id=ids[3], row_key="fox")
    later = new_batch(catalog, "again.csv")
    set_row(catalog, later, 2, "skipped", video_id=ids[3], row_key="fox")

    exported = list(catalog.export_videos(page=2))

    assert [video["id"] for video in exported] == ids
    assert [w["window_index"] for w in exported[3]["windows"]] == [0, 1]
    assert exported[3]["windows"][1] == {
        "window_index": 1, "frame_start": 20, "frame_end": 44, "latent_start": 5, "latent_end": 12,
        "actor": "RenderActor-0", "node": "node-a", "gpu_id": "0", "seconds": 1.5, "attempts": 1,
    }
    assert exported[3]["batch_row"]["batch_id"] == batch_id and exported[3]["batch_row"]["status"] == "done"
    assert exported[0]["windows"] == [] and exported[0]["batch_row"] is None
    assert exported[0]["content_key"] == video_fields(0)["content_key"]
    json.dumps(exported)


def test_row_inserted_by_a_concurrent_writer_is_updated_not_duplicated(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    batch_id = new_batch(catalog)
    caplog.set_level(logging.DEBUG, logger="tasks.catalog.batches")
    outcome: list[Any] = []
    with catalog.session("hold a row insert open", write=True) as session:
        session.add(BatchRow(batch_id=batch_id, row_number=2, row_key="a", status="pending", attempts=0))
        session.flush()
        writer = threading.Thread(target=lambda: outcome.append(
            set_row(catalog, batch_id, 2, "failed", reason="boom", attempts=1)
        ))
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive(), "the second writer waits for the first transaction"
    writer.join(timeout=30)

    assert [(row["row_key"], row["status"], row["reason"]) for row in list_rows(catalog)] == [("a", "failed", "boom")]
    assert outcome[0]["status"] == "failed"
    if catalog_backend(catalog) == "postgresql":
        assert "retrying" in caplog.text, "PostgreSQL lets both insert; the loser retries as an update"


def catalog_backend(catalog: Catalog) -> str:
    return "sqlite" if catalog.url.startswith("sqlite") else "postgresql"


ROWS, WORKERS = 12, 4


def _race(catalog: Catalog, batch_id: str, worker: int) -> None:
    """Every worker records every row: the same rows, videos with the same content keys, different files."""
    add_rows(catalog, batch_id, [RowRecord(n, f"row-{n}", content_key=f"{n:064x}") for n in range(1, ROWS + 1)])
    for n in range(1, ROWS + 1):
        video_id, _ = catalog.add_video_once(**video_fields(n, output_path=f"/out/{n}-by-{worker}.mp4"))
        set_row(catalog, batch_id, n, "done", video_id=video_id, attempts=1)


def _assert_no_loss_no_duplicates(catalog: Catalog, batch_id: str) -> None:
    rows = list_rows(catalog, batch_id=batch_id)
    videos = {video["content_key"]: video["id"] for video in catalog.list_videos()}
    assert len(videos) == len(catalog.list_videos()) == ROWS
    assert [row["row_number"] for row in rows] == list(range(1, ROWS + 1))
    assert all(row["status"] == "done" and row["video_id"] == videos[row["content_key"]] for row in rows)
    assert finish_batch(catalog, batch_id)["counts"]["done"] == ROWS


def test_concurrent_threads_lose_no_rows_and_duplicate_nothing(catalog: Catalog) -> None:
    batch_id = new_batch(catalog)
    errors: list[BaseException] = []
    start = threading.Barrier(WORKERS)

    def work(worker: int) -> None:
        try:
            start.wait()
            _race(catalog, batch_id, worker)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    _assert_no_loss_no_duplicates(catalog, batch_id)


def _race_in_process(url: str, batch_id: str, start: Any, worker: int) -> None:
    start.wait()
    with open_catalog(url) as catalog:
        _race(catalog, batch_id, worker)


def test_concurrent_processes_lose_no_rows_and_duplicate_nothing(catalog_url: str) -> None:
    with open_catalog(catalog_url) as catalog:
        batch_id = new_batch(catalog)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WORKERS)
    workers = [
        context.Process(target=_race_in_process, args=(catalog_url, batch_id, start, w)) for w in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)

    assert [worker.exitcode for worker in workers] == [0] * WORKERS
    with open_catalog(catalog_url) as catalog:
        _assert_no_loss_no_duplicates(catalog, batch_id)
