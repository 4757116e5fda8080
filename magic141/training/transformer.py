"""The video transformer trained by flow matching on toy-world windows: the T2V teacher, then the I2V teacher.

As in the paper (Sec. 3.1), the text-to-video model comes first; the image-to-video model starts from it,
its patch embedding widened from C to 2C+1 input channels with the new channels at zero
(:func:`magic141.adaptation.widen_patch_embedding`), and learns to follow the first-frame latent and the
VLM's image tokens, which go in front of the text tokens (the ``magic141`` prompt format).

Training reads a cache of VAE latents and text-encoder states, computed once per (VAE, text encoders,
dataset) before the first step: the text encoders stay frozen at their seeded weights, and the
transformer's token refiner learns to read them. The loss is the flow-matching velocity error
``||v(x_t, t) - (noise - x_0)||^2`` at ``x_t = (1 - s) x_0 + s noise``, with ``s`` drawn uniformly and shifted
by the preset's flow shift, as the sampler's schedule is. One caption in ten is replaced by the empty
prompt, so the teachers can be sampled with classifier-free guidance. The guidance embedding sees a
constant ``w = 1``; CFG distillation later teaches it other values.

The I2V stage starts on plain windows (``plain_steps``): objects moving the four ways at the world's middle size
and exact speed, from their first frame; in the first half of those steps one training combination (the grammar's
first colour, shape and background), in the second half every training combination. Measured on held-out captions
(README, "Not there yet"), the full world alone does not teach the I2V teacher to follow the caption's direction
in thousands of steps; one object learns it in a few hundred, every combination then learns it from that object
(and not from scratch), and the world keeps it.

Long videos are sampled in windows, so the cache holds windows from later in their videos too (a quarter of
them start at a random time of a 10 s video, where objects bounce and sizes turn): a chained window starts from
such a frame, and the VLM still sees the video's first frame. One I2V step in five sees no first-frame latent
(zero image channels and mask), as the co-denoised windows after the first do.

The I2V stage writes the first-frame latent in the ``image_frames`` layout it declares in its weights
(:data:`magic141.conditioning.IMAGE_FRAMES`): the toy recipe repeats it in every latent frame (``every``), where
the paper puts it in frame 0 only (``first``). Measured (README, "Not there yet"), the toy transformers do not
learn to carry the first frame's outline from frame 0 to the others through attention; given the latent at every
frame's own position, they keep it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from magic141.adaptation import widen_patch_embedding
from magic141.components import (
    I2VComponents,
    build_i2v_components,
    build_transformer,
    fingerprint_modules,
    vae_encoder_fingerprint,
)
from magic141.conditioning import IMAGE_FRAMES, check_image_frames, image_condition, model_input
from magic141.presets import Preset
from magic141.prompt_encoding import t2v_prompt_template, t2v_text_pipeline, vlm_image_tokens
from magic141.toy_world import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    Caption,
    all_captions,
    render_frame,
    render_video,
    sample_scene,
    split_captions,
)
from magic141.training.loop import sample_rng
from magic141.utils import InputError
from magic141.weights import save_i2v_components

logger = logging.getLogger(__name__)

CAPTION_DROPOUT = 0.1
TEACHER_GUIDANCE = 1.0


def _scale(vae: torch.nn.Module) -> float:
    return float(vae.config.scaling_factor)


# Of the cached windows, those that start later in their video, where chained and parallel windows do. After a
# bounce the caption's direction is wrong, so most windows start at the video's start, where it is right.
LATER_WINDOWS = 0.25
LATEST_START_S = 9.0  # the latest start of such a window, in seconds (videos of about 10 s)
IMAGE_DROPOUT = 0.2  # of the I2V steps' windows see no first-frame latent, as parallel windows after the first do
ENCODE_CHUNK = 32  # windows encoded by the VAE at once while building the cache
PLAIN_SAMPLES = 2048  # windows of the plain cache (at most the world cache's): even rows one object, odd rows every one
PLAIN_CAPTIONS = tuple(Caption(next(iter(COLOURS)), SHAPES[0], motion, next(iter(BACKGROUNDS))) for motion in DIRECTIONS)


def cache_window(preset: Preset, captions: Sequence[Caption], seed: int, index: int) -> tuple[Caption, np.ndarray, np.ndarray]:
    """Window ``index`` of a cache seeded ``seed``: its caption, its frames (F, H, W, 3) and its video's first
    frame (H, W, 3), which the VLM sees. A share of the windows start at a random time of the video, so the
    teachers learn what later windows look like (objects that bounce off the borders, sizes that turn)."""
    rng = np.random.default_rng([seed, index])
    caption = captions[index % len(captions)]
    scene = sample_scene(caption, preset.width, preset.height, int(rng.integers(2**31)))
    start = float(rng.uniform(0, LATEST_START_S)) if rng.random() < LATER_WINDOWS else 0.0
    video = render_video(scene, preset.window_frames, preset.fps, preset.width, preset.height, start=start)
    first = video[0] if start == 0.0 else render_frame(scene, 0.0, preset.width, preset.height)
    return caption, video, first


def plain_window(preset: Preset, seed: int, index: int) -> tuple[Caption, np.ndarray, np.ndarray]:
    """Window ``index`` of a plain cache seeded ``seed``, from its first frame, the object at the middle size and
    exact speed (``sample_scene(jitter=False)``): at even indices one of :data:`PLAIN_CAPTIONS`, at odd ones
    any moving training caption; only where the object starts varies."""
    captions = PLAIN_CAPTIONS if index % 2 == 0 else _moving_captions()
    caption = captions[index // 2 % len(captions)]
    scene = sample_scene(caption, preset.width, preset.height, int(np.random.SeedSequence([seed, index]).generate_state(1)[0]),
                         jitter=False)
    video = render_video(scene, preset.window_frames, preset.fps, preset.width, preset.height)
    return caption, video, video[0]


@lru_cache(maxsize=1)
def _moving_captions() -> tuple[Caption, ...]:
    return tuple(c for c in split_captions("train") if c.motion in DIRECTIONS)


@torch.no_grad()
def build_cache(
    components: I2VComponents,
    preset: Preset,
    samples: int,
    seed: int,
    path: Path,
    on_progress: Callable[[int, int], None] | None = None,
    plain: bool = False,
) -> Path:
    """Encode ``samples`` training windows (latents, first-frame latents, the VLM image tokens of their video's
    first frame) and every caption's text states into one safetensors file at ``path``: the world's windows
    (:func:`cache_window`), or its plain windows (:func:`plain_window`)."""
    vae = components.vae.eval()
    captions = split_captions("train")
    texts: dict[str, torch.Tensor] = {}
    embeds, mask, pooled = encode_text(components, ["", *(c.text for c in all_captions())], preset.text.max_sequence_length)
    for index in range(len(embeds)):
        texts[f"text.{index}"], texts[f"text_mask.{index}"], texts[f"pooled.{index}"] = embeds[index], mask[index], pooled[index]
    latents, firsts, tokens, caption_ids = [], [], [], []
    text_index = {c.text: i + 1 for i, c in enumerate(all_captions())}
    for chunk in range(0, samples, ENCODE_CHUNK):
        windows = [plain_window(preset, seed, index) if plain else cache_window(preset, captions, seed, index)
                   for index in range(chunk, min(chunk + ENCODE_CHUNK, samples))]
        pixels = torch.from_numpy(np.stack([video for _, video, _ in windows])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        latents.append(vae.encode(pixels).latent_dist.mean * _scale(vae))  # (B, C, T, h, w)
        firsts.append(vae.encode(pixels[:, :, :1]).latent_dist.mean * _scale(vae))  # (B, C, 1, h, w)
        firsts_seen = [PIL.Image.fromarray(first) for _, _, first in windows]
        tokens.extend(vlm_image_tokens(components, firsts_seen, torch.device("cpu")))
        caption_ids.extend(text_index[caption.text] for caption, _, _ in windows)
        if on_progress is not None:
            on_progress(chunk + len(windows), samples)
    tensors = {
        **texts,
        "latents": torch.cat(latents),
        "first_latents": torch.cat(firsts),
        "image_tokens": torch.stack(tokens),
        "captions": torch.tensor(caption_ids),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in tensors.items()}, partial)
    partial.replace(path)
    return path


def encode_text(components: I2VComponents, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, ...]:
    """The prompts' text states (B, L, D), masks (B, L) and pooled vectors (B, D) as the ``magic141`` format
    encodes them (the language model alone, HunyuanVideo's T2V template), without the image tokens."""
    embeds, pooled, mask = t2v_text_pipeline(components).encode_prompt(
        prompt=prompts, prompt_template=t2v_prompt_template(components.tokenizer), device=torch.device("cpu"),
        max_sequence_length=max_sequence_length,
    )
    return embeds, mask, pooled


@lru_cache(maxsize=2)
def _load_cache(path: str) -> dict[str, torch.Tensor]:
    return load_file(path)


@dataclass(frozen=True)
class FlowBatch:
    hidden: torch.Tensor  # (B, C or 2C+1, T, h, w) model input
    target: torch.Tensor  # (B, C, T, h, w) velocity
    timestep: torch.Tensor  # (B,) in [0, 1000]
    text: torch.Tensor  # (B, L, D)
    text_mask: torch.Tensor  # (B, L)
    pooled: torch.Tensor  # (B, D_pooled)


class FlowTrainee(torch.nn.Module):
    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, batch: FlowBatch) -> torch.Tensor:
        guidance = torch.full_like(batch.timestep, TEACHER_GUIDANCE * 1000.0)
        velocity = self.transformer(
            hidden_states=batch.hidden,
            timestep=batch.timestep,
            encoder_hidden_states=batch.text,
            encoder_attention_mask=batch.text_mask,
            pooled_projections=batch.pooled,
            guidance=guidance,
            return_dict=False,
        )[0]
        return F.mse_loss(velocity, batch.target)


@dataclass(frozen=True)
class TransformerStage:
    """Flow-matching training of the ``mode`` ("t2v" or "i2v") transformer on a latent cache.

    The I2V stage starts from the T2V weights in ``init`` (widened); the T2V stage from seeded weights. Its first
    ``plain_steps`` steps read the plain cache ``plain`` instead of the world's: its one object in the first half,
    every object in the second.
    The I2V stage saves a whole weights folder (``magic141.weights``): the trained transformer, declaring the
    ``magic141`` prompt format and the ``image_frames`` layout it was trained with, beside the ``vae`` folder's VAE
    and the seeded text encoders.
    """

    preset: Preset
    mode: str
    cache: Path
    cache_fingerprint: str
    init: Path | None = None
    vae: Path | None = None
    plain: Path | None = None
    plain_fingerprint: str | None = None
    plain_steps: int = 0
    image_frames: str = IMAGE_FRAMES[0]

    def __post_init__(self) -> None:
        if self.plain_steps and (self.mode != "i2v" or self.plain is None):
            raise InputError("plain steps train the I2V stage from a plain cache; the T2V stage takes none")
        if check_image_frames(self.image_frames) != IMAGE_FRAMES[0] and self.mode != "i2v":
            raise InputError("the image-frames layout is the I2V stage's; the T2V stage sees no image")

    @property
    def name(self) -> str:
        return self.mode

    def describe(self) -> dict[str, Any]:
        described = {"preset": self.preset.name, "transformer": asdict(self.preset.transformer),
                     "cache": self.cache_fingerprint, "init": None if self.init is None else str(self.init)}
        if self.plain_steps:
            described |= {"plain_cache": self.plain_fingerprint, "plain_steps": self.plain_steps}
        if self.image_frames != IMAGE_FRAMES[0]:
            described["image_frames"] = self.image_frames
        return described

    def build(self, seed: int) -> torch.nn.Module:
        from diffusers import HunyuanVideoTransformer3DModel

        torch.manual_seed(seed)
        if self.mode == "t2v":
            transformer = build_transformer(self.preset.transformer, self.preset.text, image_condition=False)
        else:
            transformer = HunyuanVideoTransformer3DModel.from_pretrained(str(self.init))
            if transformer.config.image_condition_type is None:
                widen_patch_embedding(transformer)
        return FlowTrainee(transformer.train().requires_grad_(True))

    def batch(self, seed: int, step: int, samples: Sequence[int]) -> FlowBatch:
        plain = step < self.plain_steps
        cache = _load_cache(str(self.plain if plain else self.cache))
        rows = []
        for index in samples:
            rng = sample_rng(seed, step, index)
            row = 2 * (index % (len(cache["captions"]) // 2)) + (2 * step >= self.plain_steps) if plain else index
            x0 = cache["latents"][row]
            noise = torch.randn(x0.shape, generator=rng)
            u = float(torch.rand(1, generator=rng))
            shift = self.preset.flow_shift
            sigma = shift * u / (1 + (shift - 1) * u)
            caption = int(cache["captions"][row])
            if float(torch.rand(1, generator=rng)) < CAPTION_DROPOUT:
                caption = 0
            noisy = (1 - sigma) * x0 + sigma * noise
            if self.mode == "i2v":
                image, mask = image_condition(cache["first_latents"][row][None], x0.shape[1], self.image_frames)
                if float(torch.rand(1, generator=rng)) < IMAGE_DROPOUT:
                    image, mask = torch.zeros_like(image), torch.zeros_like(mask)
                hidden = model_input(noisy[None], image, mask)[0]
                text = torch.cat([cache["image_tokens"][row], cache[f"text.{caption}"]])
                text_mask = torch.cat([torch.ones(cache["image_tokens"].shape[1]), cache[f"text_mask.{caption}"]])
            else:
                hidden, text, text_mask = noisy, cache[f"text.{caption}"], cache[f"text_mask.{caption}"]
            rows.append((hidden, noise - x0, sigma * 1000.0, text, text_mask, cache[f"pooled.{caption}"]))
        hidden, target, timestep, text, text_mask, pooled = zip(*rows)
        return FlowBatch(torch.stack(hidden), torch.stack(target), torch.tensor(timestep), torch.stack(text),
                         torch.stack(text_mask), torch.stack(pooled))

    def save(self, trainee: torch.nn.Module, folder: Path) -> None:
        if self.mode == "t2v":
            trainee.transformer.save_pretrained(folder, safe_serialization=True)
            return
        components = encoders(self.preset, self.vae)
        components.transformer = trainee.transformer.eval()
        components.prompt_format = "magic141"
        components.image_frames = self.image_frames
        save_i2v_components(components, folder)


def cache_path(cache_dir: Path, components: I2VComponents, preset: Preset, samples: int, seed: int,
               plain: bool = False) -> tuple[Path, str]:
    """Where the cache of these encoders and this dataset (the world's windows, or the plain ones, at the video
    geometry of ``preset``) lives, and its fingerprint."""
    modules = {"text_encoder": components.text_encoder, "text_encoder_2": components.text_encoder_2}
    # The key names the windows' recipe, so a cache built by another recipe is never read as this one's.
    if plain:
        recipe = {"plain": {"even": [c.text for c in PLAIN_CAPTIONS], "odd": "any moving training caption"}}
    else:
        recipe = {"later_windows": LATER_WINDOWS, "latest_start_s": LATEST_START_S}
    geometry = {"frame": [preset.width, preset.height], "fps": preset.fps, "window_frames": preset.window_frames}
    dataset = {"samples": samples, "seed": seed, "geometry": geometry} | recipe
    # The VAE's encoder alone: a refined decoder (``train vae --refine``) leaves the latents as they were.
    key = json.dumps({"encoders": fingerprint_modules(modules), "vae_encoder": vae_encoder_fingerprint(components.vae),
                      **dataset}, sort_keys=True)
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{'plain' if plain else 'latents'}-{fingerprint}.safetensors", fingerprint


def encoders(preset: Preset, vae_folder: Path | None) -> I2VComponents:
    """The preset's seeded text encoders with the trained VAE of ``vae_folder`` (seeded too when None)."""
    from diffusers import AutoencoderKLHunyuanVideo

    components = build_i2v_components(preset)
    if vae_folder is not None:
        components.vae = AutoencoderKLHunyuanVideo.from_pretrained(str(vae_folder)).eval().requires_grad_(False)
    return components
