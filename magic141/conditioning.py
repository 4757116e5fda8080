"""Conditioning of the I2V transformer: the 2C+1 channel input and the VLM prompt template.

The transformer sees ``concat(X, I_o, m)`` along channels (paper Sec. 3.1): the noisy latent X (C),
the first-frame image latent zero-padded over the remaining latent frames (C), and a binary mask
that is 1 on the latent frames given by the image and 0 elsewhere (1). Weights may declare the
``every`` image-frames layout instead: the first-frame latent repeated in every latent frame's image
channels, the mask unchanged (see :data:`IMAGE_FRAMES`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from magic141.utils import InputError

# The HunyuanVideo I2V chat template: the reference image comes first (``<image>``, expanded into the
# vision tokens), then the instruction, then the user prompt.
PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\n<image>\nDescribe the video by detailing the following "
    "aspects according to the reference image: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>\n\n"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


# How prompt and image become the DiT's text tokens (see magic141.prompt_encoding); the first is the default.
PROMPT_FORMATS = ("hunyuan-i2v", "magic141")


def check_prompt_format(name: str) -> str:
    if name not in PROMPT_FORMATS:
        raise InputError(f"unknown prompt format {name!r}; choose one of: {', '.join(PROMPT_FORMATS)}")
    return name


# How the reference image reaches the model and where sampling starts; the first is the default.
# ``diffusers`` (diffusers' HunyuanVideo I2V): the VLM sees the reference fitted to the video size, the image
# latent is the VAE posterior's mode, sampling starts at 0.999 noise + 0.001 image latent, the tokenizer
# pads on the side its folder says. ``official`` (the Magic 1-For-1 inference): the VLM sees the reference
# as given, the image latent is a sample of the posterior, sampling starts from pure noise, padding is right.
CONVENTIONS = ("diffusers", "official")


def check_convention(name: str) -> str:
    if name not in CONVENTIONS:
        raise InputError(f"unknown convention {name!r}; choose one of: {', '.join(CONVENTIONS)}")
    return name


def prompt_template_for(tokenizer: PreTrainedTokenizerBase, image_tokens: int) -> dict[str, Any]:
    """The template dict of diffusers' HunyuanVideo I2V prompt encoder, with offsets counted for ``tokenizer``.

    ``crop_start`` is the number of template tokens before the user prompt (they are cropped from the
    text embeddings); the image embeddings sit where ``<image>`` was, expanded to ``image_tokens``.
    """
    prefix_ids = tokenizer(PROMPT_TEMPLATE.split("{}")[0]).input_ids
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if prefix_ids.count(image_id) != 1:
        raise InputError("the tokenizer must encode '<image>' as exactly one token")
    image_start = prefix_ids.index(image_id)
    return {
        "template": PROMPT_TEMPLATE,
        "crop_start": len(prefix_ids),
        "image_emb_start": image_start,
        "image_emb_end": image_start + image_tokens,
        "image_emb_len": image_tokens,
    }


# Where the first-frame latent sits in the image channels; the first is the default. ``first`` (the paper's and
# diffusers' layout): in latent frame 0, zeros elsewhere. ``every``: repeated in every latent frame, so each frame's
# tokens see the first frame's content at their own position without routing it through attention (the toy
# models' layout: at their size, attention does not learn that routing; README, "Not there yet").
IMAGE_FRAMES = ("first", "every")


def check_image_frames(name: str) -> str:
    if name not in IMAGE_FRAMES:
        raise InputError(f"unknown image-frames layout {name!r}; choose one of: {', '.join(IMAGE_FRAMES)}")
    return name


def image_condition(
    image_latents: torch.Tensor, num_latent_frames: int, image_frames: str = IMAGE_FRAMES[0]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The image channels of the first-frame latent in the ``image_frames`` layout, and the mask.

    image_latents: (B, C, 1, h, w), already scaled by the VAE scaling factor.
    Returns the image channels (B, C, T, h, w) and the mask (B, 1, T, h, w), 1 at frame 0 only.
    """
    if image_latents.ndim != 5 or image_latents.shape[2] != 1:
        raise InputError(f"image_latents must be (B, C, 1, h, w), got {tuple(image_latents.shape)}")
    batch, channels, _, height, width = image_latents.shape
    if check_image_frames(image_frames) == "every":
        image = image_latents.expand(-1, -1, num_latent_frames, -1, -1).clone()
    else:
        image = image_latents.new_zeros(batch, channels, num_latent_frames, height, width)
        image[:, :, :1] = image_latents
    mask = image_latents.new_zeros(batch, 1, num_latent_frames, height, width)
    mask[:, :, :1] = 1
    return image, mask


def model_input(latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """concat(X, I_o, m) along channels: (B, C, T, h, w) x2 + (B, 1, T, h, w) -> (B, 2C+1, T, h, w)."""
    return torch.cat([latents, image, mask], dim=1)
