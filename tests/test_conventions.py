"""The prompt-and-sampling convention the weights declare: ``official`` samples as the official inference does,
``diffusers`` as diffusers' HunyuanVideo I2V pipeline; each checked against its own computation at tiny size."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import transforms

from magic141.executor import posterior_seed, window_noise
from magic141.pipeline import Magic141Pipeline, fit_image
from magic141.sampler import NOISE_LEVEL, SamplerConfig
from magic141.weights import read_convention, save_i2v_components

SEED = 7


class _Recorder:
    """Stands in for a component, records its first positional argument on every call (each item of a batch),
    and delegates."""

    def __init__(self, wrapped, seen: list) -> None:
        self.wrapped, self.seen = wrapped, seen

    def __call__(self, *args, **kwargs):
        given = args[0] if args else next(iter(kwargs.values()))
        self.seen.extend(given if isinstance(given, list) else [given])
        return self.wrapped(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.wrapped, name)


def _pipeline(tiny_pipeline: Magic141Pipeline, convention: str, seen_images: list) -> Magic141Pipeline:
    """The tiny pipeline with ``convention`` (official weights come with the official prompt format), its image
    processor recording the images the VLM is given."""
    prompt_format = "magic141" if convention == "official" else "hunyuan-i2v"
    components = tiny_pipeline.components
    components = dataclasses.replace(components, convention=convention, prompt_format=prompt_format,
                                     image_processor=_Recorder(components.image_processor, seen_images))
    return Magic141Pipeline(components, tiny_pipeline.preset)


def _reference() -> PIL.Image.Image:
    """A portrait image (the tiny preset is landscape), with detail that a crop or resize changes."""
    pixels = np.random.default_rng(3).integers(0, 256, (70, 30, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


@pytest.mark.parametrize("convention", ["official", "diffusers"])
def test_the_vlm_image_and_the_first_latent_follow_the_convention(tiny_pipeline, convention: str) -> None:
    seen_images: list = []
    pipe = _pipeline(tiny_pipeline, convention, seen_images)
    preset = pipe.preset
    first_inputs: list = []

    def record_first_input(_module, args, kwargs) -> None:
        if not first_inputs:
            first_inputs.append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])

    hook = pipe.components.transformer.register_forward_pre_hook(record_first_input, with_kwargs=True)
    reference = _reference()
    try:
        windows = list(pipe(reference, "a red circle", num_frames=8, seed=SEED, sampler=SamplerConfig(steps=1)))
    finally:
        hook.remove()
    assert windows and first_inputs

    if convention == "official":  # the official inference's dataset transform (datasets/test_image.py)
        ratio = reference.width / reference.height
        if ratio > preset.width / preset.height:
            cover = (preset.height, int(preset.height * ratio))
        else:
            cover = (int(preset.width / ratio), preset.width)
        fitted = transforms.CenterCrop((preset.height, preset.width))(transforms.Resize(cover)(reference))
    else:
        fitted = fit_image(reference, preset.width, preset.height)
    expected_vlm = reference if convention == "official" else fitted
    vlm_images = [np.asarray(image) for image in seen_images if isinstance(image, PIL.Image.Image)]
    assert vlm_images and all(np.array_equal(image, np.asarray(expected_vlm)) for image in vlm_images), \
        f"the VLM saw {[image.shape for image in vlm_images]}, expected {np.asarray(expected_vlm).shape}"

    vae = pipe.components.vae
    pixels = torch.from_numpy(np.array(fitted)).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        posterior = vae.encode(pixels.unsqueeze(2).to(vae.dtype)).latent_dist
    scale = vae.config.scaling_factor
    noise = window_noise(preset, SEED, windows[0].window)
    if convention == "official":
        image_latents = posterior.sample(torch.Generator("cpu").manual_seed(posterior_seed(SEED, 0))) * scale
        expected_start = noise
    else:
        image_latents = posterior.mode() * scale
        expected_start = noise * NOISE_LEVEL + image_latents.float() * (1 - NOISE_LEVEL)
    channels = noise.shape[1]
    started = first_inputs[0][:, :channels].float()
    torch.testing.assert_close(started, expected_start, rtol=1e-5, atol=1e-5)
    conditioned = first_inputs[0][:, channels : 2 * channels, :1].float()
    torch.testing.assert_close(conditioned, image_latents.float(), rtol=1e-4, atol=1e-4)


def test_official_weights_pad_right_and_carry_their_convention_into_the_fingerprint(tiny_pipeline, tmp_path: Path):
    official = dataclasses.replace(tiny_pipeline.components, convention="official", prompt_format="magic141")
    root = save_i2v_components(official, tmp_path / "official")
    assert read_convention(root / "transformer") == "official"
    tokenizer_config = root / "tokenizer" / "tokenizer_config.json"
    config = json.loads(tokenizer_config.read_text())
    tokenizer_config.write_text(json.dumps({**config, "padding_side": "left"}))

    loaded = Magic141Pipeline.from_preset("tiny", weights=root, dtype=torch.float32)
    assert loaded.components.convention == "official"
    assert loaded.components.tokenizer.padding_side == "right", "the official inference pads on the right"
    same_format = dataclasses.replace(tiny_pipeline.components, prompt_format="magic141")
    diffusers_root = save_i2v_components(same_format, tmp_path / "diffusers")
    assert read_convention(diffusers_root / "transformer") == "diffusers"
    tokenizer_config = diffusers_root / "tokenizer" / "tokenizer_config.json"
    tokenizer_config.write_text(json.dumps({**json.loads(tokenizer_config.read_text()), "padding_side": "left"}))
    diffusers = Magic141Pipeline.from_preset("tiny", weights=diffusers_root, dtype=torch.float32)
    assert diffusers.components.tokenizer.padding_side == "left", "diffusers weights keep their folder's side"
    assert loaded.weights_fingerprint != diffusers.weights_fingerprint, "same tensors, another convention"
