"""The rebuild_index flow against a real Prefect API: published versions and their catalog rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, TaskRunFilter
from prefect.client.schemas.sorting import ArtifactSort

from deployments.rebuild_index import rebuild_index_deployment
from deployments.schedules import NIGHTLY_CRON
from flows.rebuild_index import rebuild_index
from retrieval_index import RetrievalIndexError, open_index, store
from retrieval_index.demo import make_demo_corpus
from tasks.catalog import open_catalog
from tasks.catalog.index_builds import get_index_build, list_index_builds, start_index_build
from tasks.index import ABANDONED

N_IMAGES = 10


def test_rebuild_publishes_a_version_and_records_it(prefect_api, catalog_url: str, tmp_path: Path):
    corpus = tmp_path / "corpus"
    make_demo_corpus(corpus, n=N_IMAGES, broken=True)
    index_dir = tmp_path / "index"

    result = rebuild_index([str(corpus)], str(index_dir), catalog_url, incremental=False)

    reader = open_index(index_dir)
    assert reader.version == result.version and reader.count == N_IMAGES == result.count
    with open_catalog(catalog_url) as catalog:
        row = get_index_build(catalog, result.version)
    assert row["status"] == "published" and row["id"] == result.build_id
    assert (row["count"], row["embedded"], row["dimension"]) == (N_IMAGES, N_IMAGES, reader.dimension)
    assert row["index_type"] == "flat" and row["recall"] == 1.0 and row["duration_s"] > 0
    assert row["model_id"] == reader.model_id and row["index_dir"] == str(index_dir)
    assert row["corpus"] == str(corpus) and row["finished_at"] >= row["started_at"]
    assert {Path(item["path"]).name for item in row["skipped"]} == {"truncated.png", "notes.jpg", "empty.png",
                                                                     "README.txt"}
    assert all(item["reason"] for item in row["skipped"])
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(row["flow_run_id"]).state.is_completed()
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[row["flow_run_id"]])),
            flow_run_filter=FlowRunFilter(), task_run_filter=TaskRunFilter(), sort=ArtifactSort.CREATED_DESC,
            limit=50, offset=0,
        )
    progress = [artifact for artifact in artifacts if artifact.type == "progress"]
    assert len(progress) == 3 and all(float(artifact.data) == 100.0 for artifact in progress), \
        "scan, embed and index stages each report progress"

    make_demo_corpus(corpus / "new", n=2, start=N_IMAGES)
    again = rebuild_index([str(corpus)], str(index_dir), catalog_url)
    assert (again.embedded, again.cached, again.count) == (2, N_IMAGES, N_IMAGES + 2)
    with open_catalog(catalog_url) as catalog:
        rows = list_index_builds(catalog, str(index_dir))
    assert [r["version"] for r in rows] == [again.version, result.version]
    assert [r["embedded"] for r in rows] == [2, N_IMAGES]


def test_unchanged_rebuild_publishes_nothing_and_records_the_current_version(
    prefect_api, catalog_url: str, tmp_path: Path
):
    corpus = tmp_path / "corpus"
    make_demo_corpus(corpus, n=4, broken=True)
    index_dir = tmp_path / "index"
    first = rebuild_index([str(corpus)], str(index_dir), catalog_url)

    same = [rebuild_index([str(corpus)], str(index_dir), catalog_url) for _ in range(2)]

    assert all(result.unchanged and result.version == first.version for result in same) and not first.unchanged
    assert (same[0].count, same[0].skipped, same[0].recall) == (first.count, first.skipped, first.recall)
    assert (same[0].embedded, same[0].cached) == (0, 0)
    assert store.published_versions(index_dir) == [first.version] and open_index(index_dir).version == first.version
    assert list((index_dir / store.STAGING).iterdir()) == []
    with open_catalog(catalog_url) as catalog:
        rows = {row["id"]: row for row in list_index_builds(catalog, str(index_dir))}
        made_by = get_index_build(catalog, first.version)
    assert made_by["id"] == first.build_id and made_by["status"] == "published"
    for result in same:
        row = rows[result.build_id]
        assert row["status"] == "unchanged" and row["version"] == first.version and row["error"] is None
        assert (row["count"], row["embedded"], row["index_type"]) == (4, 0, "flat") and row["finished_at"]
    assert all(store.version_dir(index_dir, row["version"]).is_dir() for row in rows.values()), \
        "no row names a version folder that does not exist"

    forced = rebuild_index([str(corpus)], str(index_dir), catalog_url, force=True)
    assert not forced.unchanged and forced.version != first.version and open_index(index_dir).version == forced.version
    with open_catalog(catalog_url) as catalog:
        assert get_index_build(catalog, forced.version)["status"] == "published"


def test_failed_rebuild_is_recorded_and_publishes_nothing(prefect_api, tmp_path: Path):
    good = tmp_path / "good"
    make_demo_corpus(good, n=4)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_text("not an image")
    index_dir, url = tmp_path / "index", f"sqlite:///{tmp_path / 'catalog.db'}"
    first = rebuild_index([str(good)], str(index_dir), url)
    with open_catalog(url) as catalog:
        start_index_build(catalog, version="stale", corpus=str(good), index_dir=str(index_dir), model_id="m")

    with pytest.raises(RetrievalIndexError, match="has no usable images: 1 file skipped"):
        rebuild_index([str(broken)], str(index_dir), url)

    assert open_index(index_dir).version == first.version
    assert store.published_versions(index_dir) == [first.version]
    with open_catalog(url) as catalog:
        rows = {row["version"]: row for row in list_index_builds(catalog, str(index_dir))}
    failed = [row for row in rows.values() if row["version"] not in (first.version, "stale")]
    assert len(failed) == 1 and failed[0]["status"] == "failed"
    assert failed[0]["error"].startswith(f"CorpusError: the corpus {broken} has no usable images")
    assert failed[0]["skipped"] == [{"path": str(broken / "a.png"),
                                     "reason": "not an image: no image format recognises its content"}]
    assert not store.version_dir(index_dir, failed[0]["version"]).exists()
    assert rows["stale"]["status"] == "failed" and rows["stale"]["error"] == ABANDONED, \
        "a build left running by a dead process is closed by the next build"


def test_bad_rebuild_input_fails_before_any_work(prefect_api, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with pytest.raises(ValueError, match="does not exist"):
        rebuild_index([str(tmp_path / "nowhere")], str(tmp_path / "index"), url)
    make_demo_corpus(tmp_path / "corpus", n=2)
    with pytest.raises(ValueError, match="lies inside the corpus"):
        rebuild_index([str(tmp_path / "corpus")], str(tmp_path / "corpus" / "index"), url)
    assert not (tmp_path / "index").exists() and not (tmp_path / "catalog.db").exists()


def test_nightly_deployment(tmp_path: Path):
    deployment = rebuild_index_deployment([tmp_path / "corpus"], tmp_path / "index", "sqlite:///c.db")
    assert deployment.name == "rebuild-index" and deployment.concurrency_limit == 1
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == NIGHTLY_CRON == "0 3 * * *" and schedule.schedule.timezone == "UTC"
    assert deployment.parameters == {
        "corpus": [str(tmp_path / "corpus")], "index_dir": str(tmp_path / "index"), "catalog_url": "sqlite:///c.db",
        "model": "tiny", "pretrained": None, "incremental": True, "recall_target": 0.95,
    }
    custom = rebuild_index_deployment(["c"], "i", "u", cron="30 1 * * 1-5", timezone="Europe/Paris")
    assert custom.schedules[0].schedule.cron == "30 1 * * 1-5"
    assert custom.schedules[0].schedule.timezone == "Europe/Paris"
    assert Path(custom.parameters["corpus"][0]).is_absolute()
