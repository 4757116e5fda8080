"""Validation of the long-video options of a generate request: one precise line per problem."""

from pathlib import Path

import pytest

from tasks.request import GenerateRequest, validate_request


def request(tmp_path: Path, **fields) -> GenerateRequest:
    return GenerateRequest(prompt="a cat", out=str(tmp_path / "v.mp4"), catalog_url="sqlite://", **fields)


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
        validate_request(request(tmp_path, **fields))


def test_good_window_options_pass(tmp_path: Path):
    checked = validate_request(request(tmp_path, windows="parallel", overlap=3, workers=2, ray_address="auto"))
    assert (checked.windows, checked.overlap, checked.workers, checked.ray_address) == ("parallel", 3, 2, "auto")
