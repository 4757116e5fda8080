"""The library pipeline: exact frame counts, determinism, prompt and seed sensitivity, input checks."""

import numpy as np
import PIL.Image
import pytest

from magic141.pipeline import Magic141Pipeline, fit_image
from magic141.presets import PRESETS, get_preset
from magic141.prior import ImagePrior
from magic141.sampler import SamplerConfig


def render(pipe: Magic141Pipeline, image: PIL.Image.Image, prompt: str, num_frames: int, seed: int) -> np.ndarray:
    return np.concatenate([w.frames for w in pipe(image, prompt, num_frames=num_frames, seed=seed, sampler=SamplerConfig())])


@pytest.mark.parametrize("num_frames", [1, 9, 33, 34, 120])
def test_frame_count_is_exact(tiny_pipeline, prior_image, num_frames):
    frames = render(tiny_pipeline, prior_image, "waves", num_frames, seed=1)
    preset = tiny_pipeline.preset
    assert frames.shape == (num_frames, preset.height, preset.width, 3) and frames.dtype == np.uint8


def test_same_seed_same_video_other_seed_or_prompt_differs(tiny_pipeline, prior_image):
    a = render(tiny_pipeline, prior_image, "waves", 40, seed=3)
    assert np.array_equal(a, render(tiny_pipeline, prior_image, "waves", 40, seed=3))
    assert not np.array_equal(a, render(tiny_pipeline, prior_image, "waves", 40, seed=4))
    assert not np.array_equal(a, render(tiny_pipeline, prior_image, "a desert at noon", 40, seed=3))


def test_progress_reaches_total(tiny_pipeline, prior_image):
    updates = []
    list(tiny_pipeline(prior_image, "x", num_frames=40, seed=0, sampler=SamplerConfig(steps=3),
                       on_progress=lambda done, total: updates.append((done, total))))
    assert updates[-1] == (6, 6) and [d for d, _ in updates] == list(range(1, 7))


def test_weights_are_reproducible_from_the_preset(tiny_pipeline):
    assert Magic141Pipeline.from_preset("tiny").weights_fingerprint == tiny_pipeline.weights_fingerprint


def test_prior_is_deterministic_and_sized(tiny_prior: ImagePrior):
    a, b = tiny_prior("a red kite", seed=2), tiny_prior("a red kite", seed=2)
    assert a.size == (tiny_prior.preset.width, tiny_prior.preset.height)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(tiny_prior("a red kite", seed=3)))


def test_fit_image_covers_and_crops():
    image = fit_image(PIL.Image.new("L", (300, 100), 200), 64, 48)
    assert image.size == (64, 48) and image.mode == "RGB"


def test_empty_prompt_and_true_cfg_without_negative_are_refused(tiny_pipeline, prior_image):
    with pytest.raises(ValueError, match="prompt is empty"):
        next(tiny_pipeline(prior_image, "  ", num_frames=9, seed=0, sampler=SamplerConfig()))
    with pytest.raises(ValueError, match="negative prompt"):
        next(tiny_pipeline(prior_image, "x", num_frames=9, seed=0, sampler=SamplerConfig(true_cfg_scale=3.0)))


def test_true_cfg_uses_two_passes_per_step(tiny_pipeline, prior_image):
    calls = []
    hook = tiny_pipeline.components.transformer.register_forward_hook(lambda *args: calls.append(1))
    try:
        list(tiny_pipeline(prior_image, "x", num_frames=9, seed=0, negative_prompt="blurry",
                           sampler=SamplerConfig(steps=4, true_cfg_scale=3.0)))
    finally:
        hook.remove()
    assert len(calls) == 8


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of: " + ", ".join(PRESETS)):
        get_preset("huge")
