"""bulk_generate end to end on SQLite and PostgreSQL: videos for good rows, reasons for bad ones, idempotent reruns."""

from __future__ import annotations

from pathlib import Path

import PIL.Image
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
)
from prefect.client.schemas.sorting import ArtifactSort

from flows.bulk import BatchFailed, batch_of, bulk_generate
from magic141.utils import sha256_file
from retrieval_index import build_index
from retrieval_index.demo import make_demo_corpus
from tasks.catalog import open_catalog
from tasks.catalog.batches import get_batch, list_rows
from tasks.runtime.ffmpeg import probe
from tasks.runtime.progress import listening

CSV = '''id,prompt,seconds,fps,seed,image
boat,"a paper boat, drifting
down a rainy street",1,6,2,
wall,a red wall,1,6,3,wall.png
zero,nothing at all,0,6,4,
ghost,a missing picture,1,6,5,ghost.png
'''


def _write_inputs(folder: Path) -> Path:
    PIL.Image.new("RGB", (80, 60), (200, 40, 40)).save(folder / "wall.png")
    csv = folder / "prompts.csv"
    csv.write_text(CSV)
    return csv


def _artifacts(flow_run_id: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(), sort=ArtifactSort.CREATED_DESC,
            limit=100, offset=0,
        )


def test_good_rows_become_videos_bad_rows_keep_reasons_and_rerun_renders_nothing(
    prefect_api, catalog_url: str, tmp_path: Path
):
    csv = _write_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = bulk_generate(str(csv), str(out), catalog_url, retry_delay_s=0)

    assert result.counts == {"pending": 0, "done": 2, "skipped": 0, "failed": 0, "rejected": 2, "total": 4}
    rows = {row["key"]: row for row in result.rows}
    assert "seconds must be > 0" in rows["zero"]["reason"]
    assert "ghost.png" in rows["ghost"]["reason"] and "does not exist" in rows["ghost"]["reason"]
    videos = sorted(out.glob("*.mp4"))
    assert len(videos) == 2
    with open_catalog(catalog_url) as catalog:
        for key, source in (("boat", "generate"), ("wall", "user")):
            video = catalog.get_video(rows[key]["video_id"])
            assert probe(video["output_path"]).frames == 6
            assert video["output_sha256"] == sha256_file(video["output_path"])
            assert video["prior_source"] == source and video["prior_details"]["source"] == source
            assert video["batch_id"] == result.batch_id and len(video["content_key"]) == 64
            assert Path(video["thumbnail_path"]).is_file() and video["thumbnail_path"].endswith(".jpg")
        assert catalog.get_video(rows["boat"]["video_id"])["prompt"] == "a paper boat, drifting\ndown a rainy street"
        batch = get_batch(catalog, result.batch_id)
    assert batch["status"] == "done" and batch["counts"]["done"] == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".work")], "no work folders are left"

    kinds = {artifact.type for artifact in _artifacts(batch["flow_run_id"])}
    assert {"table", "progress", "markdown"} <= kinds
    summary = next(a for a in _artifacts(batch["flow_run_id"]) if a.type == "markdown" and a.key.startswith("bulk-summary"))
    assert "seconds must be &gt; 0" in summary.data or "seconds must be > 0" in summary.data

    before = {path: (path.stat().st_mtime_ns, sha256_file(path)) for path in videos}
    again = bulk_generate(str(csv), str(out), catalog_url, retry_delay_s=0)
    assert again.counts["skipped"] == 2 and again.counts["done"] == 0 and again.batch_id != result.batch_id
    assert {row["video_id"] for row in again.rows if row["video_id"]} == {rows["boat"]["video_id"], rows["wall"]["video_id"]}
    assert {path: (path.stat().st_mtime_ns, sha256_file(path)) for path in sorted(out.glob("*.mp4"))} == before
    with open_catalog(catalog_url) as catalog:
        assert len(catalog.list_videos()) == 2


def test_a_row_that_keeps_failing_is_marked_failed_and_the_others_finish(prefect_api, catalog_url: str, tmp_path: Path):
    PIL.Image.new("RGB", (64, 48), (10, 200, 10)).save(tmp_path / "green.png")
    csv = tmp_path / "prompts.csv"
    csv.write_text("id,prompt,seconds,fps,image\nfirst,a field,1,6,\nsecond,a green wall,1,6,green.png\nthird,a sea,1,6,\n")

    def remove_image_while_rendering(stage: str, done: int, total: int) -> None:
        # The image was valid when the CSV was read; it disappears before its row renders.
        if stage == "render":
            (tmp_path / "green.png").unlink(missing_ok=True)

    with listening(remove_image_while_rendering):
        state = bulk_generate(str(csv), str(tmp_path), catalog_url, concurrency=1, retries=2, retry_delay_s=0,
                              return_state=True)

    assert state.is_failed(), "a batch with a failed row is not green in the UI"
    assert state.message == "1 of 3 row(s) failed (0 pending, 2 done, 0 skipped, 1 failed, 0 rejected)"
    with pytest.raises(BatchFailed, match="1 of 3 row"):
        state.result()  # what a direct call of the flow raises
    result = batch_of(state)
    assert (result.counts["done"], result.counts["failed"]) == (2, 1)
    assert result.status == "failed"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        rows = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.name == f"bulk prompts.csv {result.batch_id[:8]}"
    assert {task.name for task in rows if task.name.startswith("row ")} == {"row first", "row second", "row third"}
    with open_catalog(catalog_url) as catalog:
        failed = list_rows(catalog, batch_id=result.batch_id, status="failed")
        done = list_rows(catalog, batch_id=result.batch_id, status="done")
    assert [row["row_key"] for row in failed] == ["second"]
    assert failed[0]["attempts"] == 3 and "green.png" in failed[0]["reason"]
    assert sorted(row["row_key"] for row in done) == ["first", "third"]
    assert all(probe(row["output"]).frames == 6 for row in result.rows if row["status"] == "done")
    assert not list(tmp_path.glob("second-*")), "the failed row leaves no files"


def test_retrieve_rows_are_rejected_up_front_without_an_index_and_use_it_when_given(prefect_api, tmp_path: Path):
    csv = tmp_path / "prompts.csv"
    csv.write_text("id,prompt,seconds,fps,prior\nfound,a yellow triangle,1,6,retrieve\nchosen,a red circle,1,6,auto\n")
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    plain, indexed = tmp_path / "plain", tmp_path / "indexed"
    plain.mkdir()
    indexed.mkdir()

    without = bulk_generate(str(csv), str(plain), catalog_url, retry_delay_s=0)

    rows = {row["key"]: row for row in without.rows}
    assert (rows["found"]["status"], rows["chosen"]["status"]) == ("rejected", "done")
    assert rows["found"]["reason"].startswith("prior 'retrieve' needs a retrieval index and none is configured")
    assert "--index-dir" in rows["found"]["reason"] and rows["chosen"]["prior_source"] == "generate"
    assert without.counts["failed"] == 0 and [p.name for p in plain.glob("found-*")] == []

    corpus = tmp_path / "corpus"
    pictures = make_demo_corpus(corpus, n=4)
    build_index([corpus], tmp_path / "index")
    with_index = bulk_generate(str(csv), str(indexed), catalog_url, index_dir=str(tmp_path / "index"),
                               threshold=-1.0, retry_delay_s=0)

    assert with_index.counts["done"] == 2 and with_index.counts["rejected"] == 0
    with open_catalog(catalog_url) as catalog:
        for row in with_index.rows:
            video = catalog.get_video(row["video_id"])
            assert video["prior_source"] == "retrieve" and Path(video["prior_image_path"]) in pictures
            assert video["prior_details"]["mode"] == ("retrieve" if row["key"] == "found" else "auto")
            assert video["prior_details"]["matches"][0]["path"] == video["prior_image_path"]


def test_weights_without_a_text_to_image_prior_reject_the_rows_that_need_one(
    prefect_api, tiny_pipeline, tmp_path: Path
):
    from magic141.weights import save_i2v_components

    weights = save_i2v_components(tiny_pipeline.components, tmp_path / "weights")
    csv = _write_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = bulk_generate(str(csv), str(out), f"sqlite:///{tmp_path / 'c.db'}", weights=str(weights), retry_delay_s=0)

    rows = {row["key"]: row for row in result.rows}
    assert rows["wall"]["status"] == "done", "a row with its own image needs no text-to-image model"
    assert rows["boat"]["status"] == "rejected" and "add a prior/ folder to the weights" in rows["boat"]["reason"]
    with open_catalog(f"sqlite:///{tmp_path / 'c.db'}") as catalog:
        video = catalog.get_video(rows["wall"]["video_id"])
    assert video["weights_fingerprint"] == tiny_pipeline.weights_fingerprint
