"""Video sizes: each preset lists its sizes by aspect ratio; a portrait first frame gives a portrait video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from flows.generate import generate
from magic141.presets import get_preset, parse_size
from magic141.sampler import SamplerConfig
from tasks.bulk_csv import RowDefaults, content_key, read_prompt_csv
from tasks.catalog import open_catalog
from tasks.request import GenerateRequest, ModelSpec
from tasks.runtime.ffmpeg import probe

PORTRAIT = (48, 64)


def test_auto_picks_the_size_nearest_the_image_and_the_taller_on_a_tie() -> None:
    full = get_preset("full-540p")
    assert full.sizes == ((960, 544), (544, 960), (624, 832), (720, 720), (832, 624))
    assert [full.nearest_size(*image) for image in ((1920, 1080), (1080, 1920), (3000, 4000), (500, 500))] == [
        (960, 544), (544, 960), (624, 832), (720, 720)]
    tiny = get_preset("tiny")
    assert tiny.nearest_size(30, 70) == PORTRAIT and tiny.nearest_size(70, 30) == (64, 48)
    assert tiny.nearest_size(100, 100) == PORTRAIT, "a square is as near both: the taller wins, as officially"
    assert parse_size("auto") is None and parse_size("48X64") == PORTRAIT
    with pytest.raises(ValueError, match=r"size '48 by 64' is not auto or WIDTHxHEIGHT"):
        parse_size("48 by 64")


def test_an_unlisted_size_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    options = dict(prompt="a fox", out=str(tmp_path / "f.mp4"), catalog_url="sqlite:///c.db", preset="tiny")
    with pytest.raises(ValueError) as error:
        GenerateRequest.from_options(**options, size="50x50")
    assert str(error.value) == "size 50x50 is not one of the tiny preset's sizes; choose auto or one of: 64x48, 48x64"
    assert GenerateRequest.from_options(**options, size="48X64").render.size == "48x64"


@pytest.mark.parametrize("windows", ["chained", "parallel"])
def test_the_library_renders_every_size_it_lists(tiny_pipeline, windows: str) -> None:
    image = PIL.Image.new("RGB", (30, 70), (200, 40, 40))
    rendered = list(tiny_pipeline(image, "a red wall", num_frames=40, seed=3, sampler=SamplerConfig(steps=1),
                                  windows=windows, size=PORTRAIT))
    assert len(rendered) > 1 and all(window.frames.shape[1:] == (64, 48, 3) for window in rendered)
    with pytest.raises(ValueError, match="choose auto or one of: 64x48, 48x64"):
        next(tiny_pipeline(image, "a red wall", num_frames=8, seed=3, sampler=SamplerConfig(steps=1), size=(64, 64)))


@pytest.mark.parametrize("windows", ["chained", "parallel"])
def test_a_portrait_image_gives_a_portrait_video(prefect_api, tmp_path: Path, windows: str) -> None:
    image = tmp_path / "tall.png"
    PIL.Image.new("RGB", (300, 700), (40, 40, 200)).save(image)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    result = generate(GenerateRequest.from_options(prompt="a blue wall", out=str(tmp_path / "v.mp4"), catalog_url=url,
                                      image=str(image), seconds=2, fps=12, seed=4, windows=windows))
    info = probe(tmp_path / "v.mp4")
    assert (info.width, info.height, info.frames) == (48, 64, 24)
    with open_catalog(url) as catalog:
        row = catalog.get_video(result.video_id)
    assert (row["width"], row["height"]) == PORTRAIT
    forced = generate(GenerateRequest.from_options(prompt="a blue wall", out=str(tmp_path / "wide.mp4"), catalog_url=url,
                                      image=str(image), seconds=1, fps=12, seed=4, windows=windows, size="64x48"))
    assert (forced.width, forced.height) == (64, 48)


def test_a_bulk_row_names_its_size_or_is_rejected_with_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,prompt,size\nwide,a cat,64x48\ntall,a dog,48x64\nauto,a cow,\nodd,a hen,50x50\n")
    table = read_prompt_csv(path, defaults=RowDefaults(ModelSpec("tiny")))
    assert {row.row_key: row.render.size for row in table.valid} == {"wide": "64x48", "tall": "48x64", "auto": "auto"}
    [odd] = table.rejected
    assert odd.row_key == "odd" and "size 50x50 is not one of the tiny preset's sizes" in odd.reason
    assert "64x48, 48x64" in odd.reason


def test_the_size_asked_is_part_of_a_rows_content_key_and_auto_keeps_older_keys() -> None:
    base = dict(prompt="a cat", negative_prompt=None, seconds=1.0, fps=8, seed=1, guidance=3.0, steps=4,
                windows="chained", prior="generate", image_sha256=None, preset="tiny", model_fingerprint="f" * 64)
    keys = {size: content_key(**base, size=size) for size in ("auto", "64x48", "48x64")}
    assert len(set(keys.values())) == 3
    assert keys["auto"] == content_key(**base), "rows without a size keep the key they had"


def test_the_pool_renders_a_portrait_job_as_the_library_does(tiny_pipeline) -> None:
    from magic141.executor import RenderJob, render_windows
    from tasks.runtime.render_pool import PoolConfig, PoolExecutor, get_pool, shutdown_pools

    image = np.asarray(PIL.Image.new("RGB", (30, 70), (40, 160, 40)))
    sampler = SamplerConfig(steps=2, flow_shift=7.0)
    try:
        pool = get_pool(PoolConfig(ModelSpec("tiny"), 2))
        job = RenderJob("portrait", "a green wall", None, image, 6, sampler, PORTRAIT)
        got = {r.window.index: r.frames for r in render_windows(PoolExecutor(pool), job, tiny_plan(), "parallel")}
    finally:
        shutdown_pools()
    reference = tiny_pipeline(PIL.Image.fromarray(image), "a green wall", num_frames=40, seed=6, sampler=sampler,
                              windows="parallel", size=PORTRAIT)
    for rendered in reference:
        assert got[rendered.window.index].shape[1:] == (64, 48, 3)
        assert np.abs(rendered.frames.astype(int) - got[rendered.window.index].astype(int)).max() <= 1


def tiny_plan():
    from magic141.pipeline import plan_video

    return plan_video(get_preset("tiny"), 40, "parallel")
