"""The two ways a prompt and its reference image become the DiT's text tokens.

``hunyuan-i2v`` (diffusers' HunyuanVideo I2V, the default): one LLaVA pass over a chat template
holding the image and the prompt; every 2nd image token is kept, in front of the prompt's tokens.

``magic141`` (the official Magic 1-For-1 inference, which its checkpoint was trained with): the
prompt goes through the language model alone with HunyuanVideo's T2V video template (the hidden
state two layers from the top, template cropped, 256 positions), exactly as diffusers' HunyuanVideo
T2V pipeline encodes it; separately, the VLM reads the image inside a fixed describe-the-video
instruction, and the last layer's states of the user turn, with every 4th image token, go in front.
The image tokens do not depend on the prompt, so a negative prompt reuses them.

In both, the pooled vector comes from the CLIP text encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from diffusers import HunyuanVideoPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from magic141.components import I2VComponents
from magic141.sampler import PromptEmbeddings
from magic141.utils import InputError

# The official Magic 1-For-1 VLM instruction; its user turn is the reference image alone.
VLM_IMAGE_PROMPT = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The central subject and overarching message or purpose of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial arrangement of objects within the scene."
    "3. Actions, events, behaviors, temporal sequences, and physical movements or transformations of objects."
    "4. Behavior, facial expressions, emotions, speaking style, eye gaze, head orientation, body orientation, "
    "gestures (hand and body), and changes in these elements for the main character."
    "5. The background setting, lighting, artistic style, and overall mood or tone of the scene."
    "6. Camera angles, movements, transitions, and other filming techniques employed in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<image><|eot_id|>"
)
USER_HEADER = "<|start_header_id|>user<|end_header_id|>"
VLM_IMAGE_TOKEN_STRIDE = 4


def t2v_prompt_template(tokenizer: Any) -> dict[str, Any]:
    """HunyuanVideo's T2V template, with ``crop_start`` counted by ``tokenizer`` (95 for Llama-3's)."""
    template = DEFAULT_PROMPT_TEMPLATE["template"]
    return {"template": template, "crop_start": len(tokenizer(template.split("{}")[0]).input_ids)}


def t2v_text_pipeline(components: I2VComponents) -> HunyuanVideoPipeline:
    """diffusers' HunyuanVideo T2V pipeline over the components, for its prompt encoder (the language model alone)."""
    return HunyuanVideoPipeline(
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        transformer=components.transformer,
        vae=components.vae,
        scheduler=components.scheduler,
        text_encoder_2=components.text_encoder_2,
        tokenizer_2=components.tokenizer_2,
    )


def _subsequence_end(sequence: list[int], pattern: list[int]) -> int:
    """Index just past the only occurrence of ``pattern`` in ``sequence``."""
    starts = [i for i in range(len(sequence) - len(pattern) + 1) if sequence[i : i + len(pattern)] == pattern]
    if len(starts) != 1:
        raise InputError(f"the VLM prompt must hold the user header exactly once, found {len(starts)}")
    return starts[0] + len(pattern)


@torch.no_grad()
def vlm_image_tokens(
    components: I2VComponents, image: PIL.Image.Image | Sequence[PIL.Image.Image], device: torch.device
) -> torch.Tensor:
    """(B, N, D) last-layer VLM states of the user turn of :data:`VLM_IMAGE_PROMPT`, every 4th image token kept,
    for one image (B = 1) or a batch of them (every image's prompt is the same, so none is padded)."""
    images = [image] if isinstance(image, PIL.Image.Image) else list(image)
    tokenizer, vlm = components.tokenizer, components.text_encoder
    image_id = vlm.config.image_token_index
    ids = tokenizer(VLM_IMAGE_PROMPT).input_ids
    at = ids.index(image_id)
    ids = ids[:at] + [image_id] * vlm.config.image_seq_length + ids[at + 1 :]
    pixels = components.image_processor(images, return_tensors="pt").pixel_values
    states = vlm(
        input_ids=torch.tensor([ids] * len(images), device=device),
        attention_mask=torch.ones(len(images), len(ids), dtype=torch.long, device=device),
        pixel_values=pixels.to(device, vlm.dtype),
        output_hidden_states=True,
    ).hidden_states[-1]
    start = _subsequence_end(ids, tokenizer(USER_HEADER, add_special_tokens=False).input_ids)
    keep = [i for i in range(start, len(ids)) if ids[i] != image_id or (i - at) % VLM_IMAGE_TOKEN_STRIDE == 0]
    return states[:, keep]


def encode_magic141(
    components: I2VComponents,
    image: PIL.Image.Image,
    prompt: str,
    negative_prompt: str | None,
    device: torch.device,
    max_sequence_length: int,
) -> tuple[PromptEmbeddings, PromptEmbeddings | None]:
    """The official Magic 1-For-1 conditioning: VLM image tokens, then the T2V-template prompt tokens."""
    text = t2v_text_pipeline(components)
    template = t2v_prompt_template(components.tokenizer)
    image_tokens = vlm_image_tokens(components, image, device)

    def encode(text_prompt: str) -> PromptEmbeddings:
        embeds, pooled, mask = text.encode_prompt(
            prompt=text_prompt, prompt_template=template, device=device, max_sequence_length=max_sequence_length
        )
        image_mask = mask.new_ones(1, image_tokens.shape[1])
        return PromptEmbeddings(
            torch.cat([image_tokens.to(embeds.dtype), embeds], dim=1), torch.cat([image_mask, mask], dim=1), pooled
        )

    return encode(prompt), None if negative_prompt is None else encode(negative_prompt)
