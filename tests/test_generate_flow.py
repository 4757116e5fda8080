"""The generate flow end to end against a real Prefect API: mp4 on disk, provenance row in the catalog."""

from __future__ import annotations

import os
import time
from pathlib import Path

import PIL.Image
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, TaskRunFilter
from prefect.client.schemas.sorting import ArtifactSort

from flows.generate import generate
from magic141.utils import sha256_file
from tasks.catalog import open_catalog
from tasks.request import GenerateRequest
from tasks.runtime.ffmpeg import probe
from tasks.runtime.leases import LEASE_S


def test_generated_video_is_complete_and_catalogued(prefect_api, catalog_url: str, tmp_path: Path):
    out = tmp_path / "fox.mp4"
    result = generate(GenerateRequest.from_options(prompt="a red fox in snow", out=str(out), catalog_url=catalog_url,
                                      seconds=2.5, fps=12, seed=9))

    info = probe(out)
    assert (info.codec, info.pix_fmt, info.frames, info.fps) == ("h264", "yuv420p", 30, 12)
    assert (info.width, info.height) == (64, 48)
    with open_catalog(catalog_url) as catalog:
        row = catalog.get_video(result.video_id)
    assert row["output_path"] == str(out) and row["output_sha256"] == sha256_file(out) == result.sha256
    assert row["output_bytes"] == out.stat().st_size
    assert (row["frames"], row["fps"], row["width"], row["height"]) == (30, 12, 64, 48)
    assert row["prompt"] == "a red fox in snow" and row["seed"] == 9 and row["steps"] == 4
    assert row["prior_source"] == "generate"
    assert row["prior_image_sha256"] == sha256_file(row["prior_image_path"])
    assert (row["prior_details"]["mode"], row["prior_details"]["source"]) == ("generate", "generate")
    assert row["preset"] == "tiny" and len(row["weights_fingerprint"]) == 64
    assert row["model_details"] == {"weights": None, "prompt_format": None, "convention": None, "image_frames": None,
                                    "distillation": None}
    assert sum(w["keep"] for w in row["window_layout"]) == 30
    assert {"prior", "render", "render_model", "total"} <= set(row["stage_timings"])
    assert row["windows_mode"] == "chained"
    windows = catalog_windows(catalog_url, result.video_id)
    assert [w["window_index"] for w in windows] == list(range(len(row["window_layout"])))
    assert [(w["frame_start"], w["frame_end"]) for w in windows] == [
        (w["start"], w["start"] + w["keep"]) for w in row["window_layout"]]
    assert all(w["actor"] == "local" and w["attempts"] == 1 and w["seconds"] > 0 for w in windows)
    assert row["flow_run_id"] and {"torch", "diffusers", "prefect", "ffmpeg"} <= set(row["library_versions"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "catalog.db" and not p.name.startswith("catalog.db-")) == [
        "fox.mp4", "fox.prior.png"], "no work files are left behind"


def catalog_windows(url: str, video_id: str) -> list[dict]:
    with open_catalog(url) as catalog:
        return catalog.video_windows(video_id)


def test_parallel_windows_give_the_exact_frame_count(prefect_api, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = generate(GenerateRequest.from_options(prompt="a river", out=str(tmp_path / "r.mp4"), catalog_url=url,
                                      seconds=3.5, fps=24, seed=2, windows="parallel", overlap=3))
    assert probe(tmp_path / "r.mp4").frames == result.frames == 84
    with open_catalog(url) as catalog:
        row = catalog.get_video(result.video_id)
    assert row["windows_mode"] == "parallel"
    windows = catalog_windows(url, result.video_id)
    assert len(windows) == len(row["window_layout"]) > 1
    for previous, current in zip(windows, windows[1:]):
        assert current["latent_start"] == previous["latent_end"] - 3 or current is windows[-1]
        assert current["frame_start"] < previous["frame_end"], "parallel windows overlap"
    assert windows[-1]["frame_end"] == 84


def test_user_image_and_same_seed_reproduce_the_same_file(prefect_api, tmp_path: Path):
    image = tmp_path / "first.png"
    PIL.Image.new("RGB", (200, 120), (200, 40, 40)).save(image)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    runs = [
        generate(GenerateRequest.from_options(prompt="a red wall", out=str(tmp_path / f"{n}.mp4"), catalog_url=url,
                                 image=str(image), seconds=1, fps=24, seed=5))
        for n in ("a", "b")
    ]
    assert runs[0].sha256 == runs[1].sha256, "same inputs and seed give a byte-identical video"
    with open_catalog(url) as catalog:
        row = catalog.get_video(runs[0].video_id)
    assert row["prior_source"] == "user" and row["prior_image_path"] == str(image)
    assert row["prior_details"]["reason"] == "the row gives its own image"
    assert row["prior_image_sha256"] == sha256_file(image)
    assert probe(tmp_path / "a.mp4").frames == 24


def test_progress_artifact_is_published(prefect_api, tmp_path: Path):
    result = generate(GenerateRequest.from_options(prompt="clouds", out=str(tmp_path / "c.mp4"),
                                      catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}", seconds=1, seed=1))
    with open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}") as catalog:
        flow_run_id = catalog.get_video(result.video_id)["flow_run_id"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
            flow_run_filter=FlowRunFilter(),
            task_run_filter=TaskRunFilter(),
            sort=ArtifactSort.CREATED_DESC,
            limit=50,
            offset=0,
        )
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress and all(float(a.data) == 100.0 for a in progress)


def test_bad_request_inside_the_flow_fails_before_any_work(prefect_api, tmp_path: Path):
    with pytest.raises(ValueError, match="fps must be between 1 and 120"):
        generate(GenerateRequest.from_options(prompt="x", out=str(tmp_path / "x.mp4"),
                                 catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}", fps=500))
    assert list(tmp_path.iterdir()) == []


def test_work_folders_abandoned_in_the_output_folder_are_removed(prefect_api, tmp_path: Path):
    abandoned, fresh = tmp_path / ".old.k3j9x2aa.work", tmp_path / ".new.k3j9x2aa.work"
    for folder in (abandoned, fresh):
        folder.mkdir()
        (folder / "prior.png").write_bytes(b"half written")
    for path in (abandoned / "prior.png", abandoned):
        os.utime(path, (time.time() - LEASE_S - 1,) * 2)

    generate(GenerateRequest.from_options(prompt="dunes", out=str(tmp_path / "d.mp4"),
                             catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}", seconds=1, seed=1))

    assert not abandoned.exists(), "a work folder nobody touched for the lease time is removed"
    assert fresh.is_dir(), "a work folder that may still be in use is kept"
