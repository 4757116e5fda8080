"""The official Magic 1-For-1 prompt format: VLM image tokens of the reference image, then T2V-template prompt tokens."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import PIL.Image
import pytest
import torch

from magic141.pipeline import Magic141Pipeline
from magic141.prompt_encoding import VLM_IMAGE_PROMPT, VLM_IMAGE_TOKEN_STRIDE, t2v_prompt_template
from magic141.sampler import SamplerConfig


@pytest.fixture(scope="module")
def official(tiny_pipeline: Magic141Pipeline) -> Magic141Pipeline:
    return Magic141Pipeline(dataclasses.replace(tiny_pipeline.components, prompt_format="magic141"), tiny_pipeline.preset)


def image(colour: tuple[int, int, int]) -> PIL.Image.Image:
    pixels = np.random.default_rng(sum(colour)).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    pixels[..., 0] = colour[0]
    return PIL.Image.fromarray(pixels)


def vlm_length(pipe: Magic141Pipeline) -> int:
    # The user turn: "\n\n", every 4th image token, <|eot_id|>.
    return 2 + math.ceil(pipe.components.text_encoder.config.image_seq_length / VLM_IMAGE_TOKEN_STRIDE)


def test_image_tokens_come_first_then_the_prompt_tokens(official: Magic141Pipeline):
    positive, negative = official.encode_prompt(image((200, 0, 0)), "a fox in the snow", "blurry")
    n = vlm_length(official)
    assert positive.embeds.shape[1] == n + official.preset.text.max_sequence_length
    assert positive.attention_mask[0, :n].eq(1).all(), "image tokens are always attended"
    prompt_tokens = len(official.components.tokenizer("a fox in the snow<|eot_id|>", add_special_tokens=False).input_ids)
    assert int(positive.attention_mask[0, n:].sum()) == prompt_tokens
    assert positive.pooled.shape == (1, official.preset.text.clip_hidden_size)
    # The negative prompt keeps the reference image's tokens (as the official inference does).
    torch.testing.assert_close(negative.embeds[:, :n], positive.embeds[:, :n])
    assert not torch.allclose(negative.embeds[:, n:], positive.embeds[:, n:])


def test_prompt_changes_only_the_prompt_tokens_and_image_only_the_image_tokens(official: Magic141Pipeline):
    n = vlm_length(official)
    base, _ = official.encode_prompt(image((200, 0, 0)), "a fox in the snow")
    other_prompt, _ = official.encode_prompt(image((200, 0, 0)), "a lighthouse at night")
    other_image, _ = official.encode_prompt(image((0, 90, 250)), "a fox in the snow")
    torch.testing.assert_close(other_prompt.embeds[:, :n], base.embeds[:, :n])
    assert not torch.allclose(other_prompt.embeds[:, n:], base.embeds[:, n:])
    torch.testing.assert_close(other_image.embeds[:, n:], base.embeds[:, n:])
    assert not torch.allclose(other_image.embeds[:, :n], base.embeds[:, :n])


def test_tokens_are_the_language_model_and_vlm_states_they_are_defined_as(official: Magic141Pipeline):
    """Recompute both parts straight from the models: the LM alone on the T2V template, the VLM on the image."""
    components, text = official.components, official.preset.text
    reference_image = image((200, 0, 0))
    positive, _ = official.encode_prompt(reference_image, "a fox in the snow")
    tokenizer, vlm = components.tokenizer, components.text_encoder

    template = t2v_prompt_template(tokenizer)
    crop = template["crop_start"]
    ids = tokenizer(template["template"].format("a fox in the snow"), max_length=crop + text.max_sequence_length,
                    padding="max_length", truncation=True, return_tensors="pt")
    lm_states = vlm.model.language_model(input_ids=ids.input_ids, attention_mask=ids.attention_mask,
                                         output_hidden_states=True).hidden_states[-3]  # two layers from the top
    n = vlm_length(official)
    torch.testing.assert_close(positive.embeds[:, n:], lm_states[:, crop:])

    image_id, count = vlm.config.image_token_index, vlm.config.image_seq_length
    prompt_ids = tokenizer(VLM_IMAGE_PROMPT).input_ids
    at = prompt_ids.index(image_id)
    full_ids = prompt_ids[:at] + [image_id] * count + prompt_ids[at + 1:]
    states = vlm(input_ids=torch.tensor([full_ids]),
                 pixel_values=components.image_processor(reference_image, return_tensors="pt").pixel_values,
                 output_hidden_states=True).hidden_states[-1]
    kept = [at - 1] + list(range(at, at + count, VLM_IMAGE_TOKEN_STRIDE)) + [at + count]  # "\n\n", image, <|eot_id|>
    assert tokenizer.convert_ids_to_tokens([full_ids[at - 1], full_ids[at + count]]) == ["\n\n", "<|eot_id|>"]
    torch.testing.assert_close(positive.embeds[:, :n], states[:, kept])


def test_a_window_renders_with_the_official_conditioning(official: Magic141Pipeline, tiny_pipeline: Magic141Pipeline):
    start = image((200, 0, 0))
    windows = list(official(start, "a fox in the snow", num_frames=12, seed=3, sampler=SamplerConfig()))
    frames = np.concatenate([w.frames for w in windows])
    assert frames.shape == (12, official.preset.height, official.preset.width, 3)
    default = np.concatenate([w.frames for w in tiny_pipeline(start, "a fox in the snow", num_frames=12, seed=3,
                                                              sampler=SamplerConfig())])
    assert not np.array_equal(frames, default), "the conditioning reaches the transformer"


def test_a_batch_of_images_gets_each_image_s_own_tokens(official: Magic141Pipeline):
    """The latent cache encodes its windows' first frames in batches: the same states as one at a time."""
    from magic141.prompt_encoding import vlm_image_tokens

    images = [PIL.Image.new("RGB", (64, 48), colour) for colour in ((200, 30, 30), (20, 40, 220), (240, 220, 20))]
    cpu = torch.device("cpu")
    batched = vlm_image_tokens(official.components, images, cpu)
    single = torch.cat([vlm_image_tokens(official.components, image, cpu) for image in images])
    assert batched.shape[0] == 3
    torch.testing.assert_close(batched, single)
    assert not torch.equal(batched[0], batched[1])
