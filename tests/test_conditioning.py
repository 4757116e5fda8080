"""The transformer's input: concat(noisy latent, zero-padded image latent, mask) along channels."""

import dataclasses
from pathlib import Path

import PIL.Image
import pytest
import torch

from magic141.conditioning import image_condition, model_input
from magic141.pipeline import Magic141Pipeline
from magic141.sampler import SamplerConfig
from magic141.tokenizers import build_llama_tokenizer
from magic141.utils import InputError
from magic141.weights import read_image_frames, save_i2v_components


def test_image_condition_layout():
    image_latents = torch.randn(2, 16, 1, 3, 4)
    image, mask = image_condition(image_latents, num_latent_frames=5)
    assert image.shape == (2, 16, 5, 3, 4) and mask.shape == (2, 1, 5, 3, 4)
    assert torch.equal(image[:, :, 0], image_latents[:, :, 0])
    assert torch.count_nonzero(image[:, :, 1:]) == 0
    assert torch.all(mask[:, :, 0] == 1) and torch.count_nonzero(mask[:, :, 1:]) == 0
    stacked = model_input(torch.randn(2, 16, 5, 3, 4), image, mask)
    assert stacked.shape == (2, 33, 5, 3, 4)


def test_the_every_frame_layout_repeats_the_first_latent_and_keeps_the_mask():
    image_latents = torch.randn(2, 16, 1, 3, 4)
    image, mask = image_condition(image_latents, 5, "every")
    first, first_mask = image_condition(image_latents, 5)
    assert image.shape == (2, 16, 5, 3, 4) and torch.equal(mask, first_mask)
    assert all(torch.equal(image[:, :, t], image_latents[:, :, 0]) for t in range(5))
    original = image_latents.clone()
    image[:, :, 1] = 0
    assert torch.equal(image_latents, original) and torch.equal(image[:, :, 2], original[:, :, 0]), \
        "each frame holds its own copy"
    with pytest.raises(InputError, match="unknown image-frames layout 'last'; choose one of: first, every"):
        image_condition(image_latents, 5, "last")


def test_image_condition_rejects_multi_frame_latents():
    with pytest.raises(ValueError, match=r"\(B, C, 1, h, w\)"):
        image_condition(torch.randn(1, 16, 2, 3, 4), 5)


def _render_recording_inputs(pipe: Magic141Pipeline, image: PIL.Image.Image, steps: int) -> tuple[list, list]:
    """One 9-frame video's windows, and the transformer's input of every forward pass that made them."""
    seen: list[torch.Tensor] = []
    hook = pipe.components.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True
    )
    try:
        windows = list(pipe(image, "a boat", num_frames=9, seed=0, sampler=SamplerConfig(steps=steps)))
    finally:
        hook.remove()
    return windows, seen


def test_transformer_receives_2c_plus_1_channels(tiny_pipeline: Magic141Pipeline, prior_image: PIL.Image.Image):
    """Every forward pass of a real render sees the noisy latent, the first-frame latent at frame 0 only, and the mask."""
    pipe = tiny_pipeline
    channels = pipe.preset.transformer.latent_channels
    expected_image = pipe.encode_image(pipe.image_pixels(prior_image))
    windows, seen = _render_recording_inputs(pipe, prior_image, 4)
    assert len(windows) == 1 and len(seen) == 4, "one window, one forward pass per step (CFG distilled)"
    for hidden in seen:
        assert hidden.shape[1] == 2 * channels + 1 == pipe.components.transformer.config.in_channels
        image, mask = hidden[:, channels : 2 * channels], hidden[:, 2 * channels :]
        torch.testing.assert_close(image[:, :, :1], expected_image)
        assert torch.count_nonzero(image[:, :, 1:]) == 0
        assert torch.all(mask[:, :, 0] == 1) and torch.count_nonzero(mask[:, :, 1:]) == 0
    assert not torch.equal(seen[0][:, :channels], seen[-1][:, :channels]), "the noisy latent changes between steps"


def test_prompt_template_offsets_point_at_the_image_token(tiny_pipeline: Magic141Pipeline):
    template = tiny_pipeline.components.prompt_template
    tokenizer = build_llama_tokenizer()
    ids = tokenizer(template["template"].format("a prompt")).input_ids
    assert ids[template["image_emb_start"]] == tokenizer.convert_tokens_to_ids("<image>")
    assert template["image_emb_end"] - template["image_emb_start"] == tiny_pipeline.preset.text.image_tokens
    prefix = tokenizer.convert_ids_to_tokens(ids[: template["crop_start"]])
    assert prefix[-3:] == ["user", "<|end_header_id|>", "\n\n"], "the crop ends right before the user prompt"


def test_weights_declaring_every_frame_are_sampled_so_and_fingerprinted_apart(
    tiny_pipeline: Magic141Pipeline, prior_image: PIL.Image.Image, tmp_path: Path
):
    """A weights folder declares its layout; the loaded pipeline feeds the first-frame latent to every frame."""
    every = dataclasses.replace(tiny_pipeline.components, image_frames="every")
    root = save_i2v_components(every, tmp_path / "every")
    assert read_image_frames(root / "transformer") == "every"
    assert read_image_frames(save_i2v_components(tiny_pipeline.components, tmp_path / "first") / "transformer") \
        == "first", "the paper's layout needs no declaration"
    pipe = Magic141Pipeline.from_preset("tiny", weights=root, dtype=torch.float32)
    assert pipe.components.image_frames == "every"
    reloaded = Magic141Pipeline.from_preset("tiny", weights=tmp_path / "first", dtype=torch.float32)
    assert pipe.weights_fingerprint != reloaded.weights_fingerprint, "the same weights sampled another way"
    channels = pipe.preset.transformer.latent_channels
    expected_image = pipe.encode_image(pipe.image_pixels(prior_image))
    _, seen = _render_recording_inputs(pipe, prior_image, 2)
    assert len(seen) == 2
    for hidden in seen:
        image, mask = hidden[:, channels : 2 * channels], hidden[:, 2 * channels :]
        for frame in range(image.shape[2]):
            torch.testing.assert_close(image[:, :, frame : frame + 1], expected_image)
        assert torch.all(mask[:, :, 0] == 1) and torch.count_nonzero(mask[:, :, 1:]) == 0


@pytest.mark.parametrize("layout", ["first", "every"])
def test_parallel_windows_after_the_first_carry_the_image_only_in_the_every_frame_layout(
    tiny_pipeline: Magic141Pipeline, prior_image: PIL.Image.Image, tmp_path: Path, layout: str
):
    """In the paper's layout the image says where a window starts (window 0 only); weights that read it in every
    latent frame are given it in every co-denoised window."""
    root = save_i2v_components(dataclasses.replace(tiny_pipeline.components, image_frames=layout), tmp_path / layout)
    pipe = Magic141Pipeline.from_preset("tiny", weights=root, dtype=torch.float32)
    channels = pipe.preset.transformer.latent_channels
    expected_image = pipe.encode_image(pipe.image_pixels(prior_image))
    seen: list[torch.Tensor] = []
    hook = pipe.components.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].clone()), with_kwargs=True
    )
    try:
        windows = list(pipe(prior_image, "a boat", num_frames=49, seed=0, sampler=SamplerConfig(steps=1),
                            windows="parallel", overlap=2))
    finally:
        hook.remove()
    assert len(windows) == len(seen) == 2, "one forward pass per window at the one step"
    for index, hidden in enumerate(seen):
        image, mask = hidden[:, channels : 2 * channels], hidden[:, 2 * channels :]
        if index and layout == "first":
            assert torch.count_nonzero(image) == torch.count_nonzero(mask) == 0
            continue
        for frame in range(image.shape[2]):
            frame_image = image[:, :, frame : frame + 1]
            if frame and layout == "first":
                assert torch.count_nonzero(frame_image) == 0
            else:
                torch.testing.assert_close(frame_image, expected_image)
        assert torch.all(mask[:, :, 0] == 1) and torch.count_nonzero(mask[:, :, 1:]) == 0
