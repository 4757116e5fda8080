"""The library pipeline: exact frame counts, determinism, prompt and seed sensitivity, input checks."""

import numpy as np
import PIL.Image
import pytest
import torch

from magic141.pipeline import Magic141Pipeline, fit_image
from magic141.presets import PRESETS, get_preset
from magic141.prior import ImagePrior
from magic141.sampler import SamplerConfig, anchors_first_frame, sample_codenoise, sample_window


def render(
    pipe: Magic141Pipeline, image: PIL.Image.Image, prompt: str, num_frames: int, seed: int, windows: str = "chained"
) -> np.ndarray:
    """The stitched frames; overlapping frames of parallel windows taken from the later window."""
    rendered = list(pipe(image, prompt, num_frames=num_frames, seed=seed, sampler=SamplerConfig(), windows=windows))
    return np.concatenate([rendered[0].frames] + [w.frames[w.window.blend :] for w in rendered[1:]])


@pytest.mark.parametrize("windows", ["chained", "parallel"])
@pytest.mark.parametrize("num_frames", [1, 34, 120])
def test_frame_count_is_exact(tiny_pipeline, prior_image, num_frames, windows):
    frames = render(tiny_pipeline, prior_image, "waves", num_frames, seed=1, windows=windows)
    preset = tiny_pipeline.preset
    assert frames.shape == (num_frames, preset.height, preset.width, 3) and frames.dtype == np.uint8


def test_one_parallel_window_is_the_single_window_sampler(tiny_pipeline, prior_image):
    pipe = tiny_pipeline
    sampler = SamplerConfig()
    conditioning = pipe.prepare(prior_image, "waves")
    (window,) = pipe.plan(pipe.preset.window_frames, "parallel")
    noise = pipe.timeline_noise(11, window.latent_frames)
    expected = sample_window(pipe.components.transformer, noise, conditioning.image_latents, conditioning.positive, sampler,
                             anchor=True)
    (rendered,) = pipe(prior_image, "waves", num_frames=pipe.preset.window_frames, seed=11, sampler=sampler, windows="parallel")
    assert np.array_equal(rendered.frames, pipe.decode_window(expected, window))


def test_a_video_starts_with_the_latent_of_its_first_frame_and_the_rest_is_as_sampled(tiny_pipeline, prior_image):
    """Under the ``diffusers`` convention the first latent frame is the image's own (the causal VAE encodes a
    video's first frame alone); frames 1 on are untouched, so they keep their parity with diffusers."""
    pipe = tiny_pipeline
    conditioning = pipe.prepare(prior_image, "waves")
    (window,) = pipe.plan(pipe.preset.window_frames, "chained")
    args = (pipe.components.transformer, pipe.noise(3, window), conditioning.image_latents, conditioning.positive,
            SamplerConfig(steps=2))
    free, anchored = sample_window(*args), sample_window(*args, anchor=True)
    assert torch.equal(anchored[:, :, :1], conditioning.image_latents)
    assert torch.equal(anchored[:, :, 1:], free[:, :, 1:])
    assert not torch.equal(free[:, :, :1], conditioning.image_latents), "the sampler alone does not reproduce it"
    assert anchors_first_frame(pipe.components.convention) and not anchors_first_frame("official")


def test_co_denoising_does_not_depend_on_how_windows_are_grouped(tiny_pipeline, prior_image):
    pipe = tiny_pipeline
    sampler = SamplerConfig()
    conditioning = pipe.prepare(prior_image, "waves")
    plan = pipe.plan(100, "parallel")
    noise = pipe.timeline_noise(5, plan[-1].latent_stop)
    calls = []

    def one_by_one(step, timestep, inputs):
        calls.append(len(inputs))
        return [pipe.predict_window(conditioning, w, x, timestep, sampler) for w, x in inputs]

    def reversed_pairs(step, timestep, inputs):
        out = {}
        for pair in [inputs[i : i + 2] for i in range(0, len(inputs), 2)][::-1]:
            for w, x in pair:
                out[w.index] = pipe.predict_window(conditioning, w, x.clone(), timestep, sampler)
        return [out[w.index] for w, _ in inputs]

    a = sample_codenoise(noise, conditioning.image_latents, plan, sampler, one_by_one)
    b = sample_codenoise(noise, conditioning.image_latents, plan, sampler, reversed_pairs)
    assert calls == [len(plan)] * sampler.steps, "one prediction per window per step"
    assert torch.equal(a, b)


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
