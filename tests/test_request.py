"""Validation of the long-video options of a generate request: one precise line per problem."""

from pathlib import Path

import pytest

from tasks.request import GenerateRequest


def request(tmp_path: Path, **fields) -> GenerateRequest:
    return GenerateRequest.from_options("a cat", str(tmp_path / "v.mp4"), "sqlite://", **fields)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"windows": "sliding"}, "unknown window mode 'sliding'; use one of: chained, parallel"),
        ({"windows": "chained", "overlap": 2}, "--overlap applies to parallel windows"),
        ({"windows": "parallel", "overlap": 0}, "overlap must be between 1 and 8 latent frames, got 0"),
        ({"windows": "parallel", "overlap": 9}, "overlap must be between 1 and 8 latent frames, got 9"),
        ({"workers": -1}, "workers must be between 0 and 256, got -1"),
        ({"ray_address": "ray://head:10001"}, "--ray-address renders on a Ray cluster; give --workers N"),
    ],
)
def test_bad_window_options_are_refused(tmp_path: Path, fields: dict, message: str):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        request(tmp_path, **fields)


def test_good_window_options_pass(tmp_path: Path):
    checked = request(tmp_path, windows="parallel", overlap=3, workers=2, ray_address="auto").render
    assert (checked.windows, checked.overlap, checked.workers, checked.ray_address) == ("parallel", 3, 2, "auto")


@pytest.fixture
def first_frame(tmp_path: Path) -> str:
    import PIL.Image

    path = tmp_path / "first.png"
    PIL.Image.new("RGB", (32, 24), (10, 20, 30)).save(path)
    return str(path)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prior": "retrieve", "image": "IMAGE", "index_dir": "."},
         "--prior retrieve takes the first frame from the retrieval index and would ignore --image; drop --image, "
         "or keep it with --prior user"),
        ({"prior": "generate", "image": "IMAGE"},
         "--prior generate takes the first frame from the text-to-image model and would ignore --image"),
        ({"prior": "retrieve"},
         "--prior retrieve needs a retrieval index and none is configured; pass --index-dir DIR"),
        ({"prior": "user"}, "--prior user takes the first frame from --image; give --image PATH"),
        ({"prior": "camera"}, "prior 'camera' is not one of auto, user, retrieve, generate"),
        ({"prior": "auto", "prior_threshold": 2.0}, "retrieval threshold must be a cosine score in [-1, 1], got 2.0"),
        ({"prior": "auto", "prior_strength": 0.0}, "img2img strength must be in (0, 1], got 0.0"),
        ({"prior": "auto", "index_dir": "MISSING"}, "index folder 'MISSING' does not exist; build one with"),
    ],
)
def test_bad_prior_options_are_refused(tmp_path: Path, first_frame: str, fields: dict, message: str):
    fields = {name: {"IMAGE": first_frame, "MISSING": str(tmp_path / "none")}.get(value, value)
              for name, value in fields.items()}
    with pytest.raises(ValueError) as info:
        request(tmp_path, **fields)
    assert str(info.value).startswith(message.replace("MISSING", str(tmp_path / "none"))), str(info.value)
    assert "\n" not in str(info.value)


def test_an_index_is_checked_only_when_the_prior_searches_it(tmp_path: Path, first_frame: str):
    missing = str(tmp_path / "none")
    for fields in ({}, {"prior": "generate"}, {"prior": "auto", "image": first_frame}):
        assert request(tmp_path, index_dir=missing, **fields).prior.index_dir is None


def test_a_guidance_scale_for_weights_without_a_guidance_input_is_refused_for_generate_and_bulk_rows(
    tmp_path: Path,
) -> None:
    """Converted official weights have no guidance embedding: a guidance scale would silently do nothing."""
    import dataclasses

    import PIL.Image

    from magic141.components import build_i2v_components
    from magic141.presets import get_preset
    from magic141.weights import save_i2v_components
    from tasks.bulk_csv import RowDefaults, read_prompt_csv
    from tasks.request import ModelSpec

    tiny = get_preset("tiny")
    plain = tiny.replace(transformer=dataclasses.replace(tiny.transformer, guidance_embeds=False))
    weights = save_i2v_components(build_i2v_components(plain), tmp_path / "weights")
    PIL.Image.new("RGB", (64, 48)).save(tmp_path / "first.png")
    given = {"preset": "tiny", "weights": str(weights), "image": str(tmp_path / "first.png")}
    with pytest.raises(ValueError, match="^guidance 2 would do nothing: this model's transformer takes no guidance"):
        request(tmp_path, guidance=2.0, **given)
    assert request(tmp_path, guidance=tiny.guidance_scale, **given).render.guidance == tiny.guidance_scale
    assert request(tmp_path, **given).render.guidance == tiny.guidance_scale
    assert request(tmp_path, guidance=2.0, preset="tiny", image=given["image"]).render.guidance == 2.0
    (tmp_path / "rows.csv").write_text("prompt,guidance,image\na red circle,2,first.png\na blue square,,first.png\n")
    table = read_prompt_csv(tmp_path / "rows.csv", defaults=RowDefaults(ModelSpec("tiny", str(weights))))
    assert [row.prompt.text for row in table.valid] == ["a blue square"]
    (rejected,) = table.rejected
    assert rejected.reason == ("guidance 2 would do nothing: the model's transformer takes no guidance scale (no guidance "
                               "embedding); empty the guidance cell")
