"""Named model presets: typed, frozen configurations of every component.

A preset fully describes the architecture of the image prior, the I2V transformer, the VAE and the
text encoders, plus the video geometry one sampler window covers. ``toy`` is the default: its weights,
trained on the toy world (:mod:`magic141.toy_world`), ship in the package (``magic141/toy_weights``).
``tiny`` builds in a second on a CPU with random weights (fast tests); ``full-540p`` is the paper's
HunyuanVideo-13B geometry. ``$MAGIC141_PRESET`` names the preset used when a command is given none.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from magic141 import toy_world
from magic141.utils import InputError

PRESET_ENV = "MAGIC141_PRESET"
DEFAULT_PRESET = "toy"


@dataclass(frozen=True)
class TransformerConfig:
    """The I2V DiT (diffusers ``HunyuanVideoTransformer3DModel``, ``latent_concat`` conditioning)."""

    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    num_single_layers: int
    num_refiner_layers: int
    rope_axes_dim: tuple[int, int, int]
    latent_channels: int = 16
    patch_size: int = 2
    patch_size_t: int = 1
    mlp_ratio: float = 4.0
    guidance_embeds: bool = True

    @property
    def in_channels(self) -> int:
        """2C+1: noisy latent, zero-padded first-frame image latent, binary mask."""
        return 2 * self.latent_channels + 1

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


@dataclass(frozen=True)
class VAEConfig:
    """The causal 3D VAE (diffusers ``AutoencoderKLHunyuanVideo``)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    latent_channels: int = 16
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    scaling_factor: float = 0.476986


@dataclass(frozen=True)
class TextEncoderConfig:
    """The LLaVA-style VLM (Llama + CLIP vision tower) and the CLIP text encoder for the pooled vector."""

    llm_hidden_size: int
    llm_layers: int
    llm_heads: int
    llm_intermediate_size: int
    vision_hidden_size: int
    vision_layers: int
    vision_heads: int
    vision_image_size: int
    vision_patch_size: int
    clip_hidden_size: int
    clip_layers: int
    clip_heads: int
    max_sequence_length: int = 256
    # Real models' sizes, so a random-weight build has their parameter count; None: the vocabulary
    # of the tokenizer built in code, and as many key/value heads as query heads.
    llm_vocab_size: int | None = None
    llm_kv_heads: int | None = None
    clip_vocab_size: int | None = None
    # Std of the seeded language model's and CLIP text model's token embeddings (transformers draws 0.02, the
    # scale of a trained model whose later layers grew the states; a random model's states stay that small).
    llm_embedding_std: float = 0.02
    clip_embedding_std: float = 0.02
    # Words the seeded tokenizers keep whole (BPE merges learnt for them); none: every byte is a token.
    tokenizer_words: tuple[str, ...] = ()

    @property
    def image_tokens(self) -> int:
        """Vision tokens the VLM puts in front of the text (CLS dropped)."""
        return (self.vision_image_size // self.vision_patch_size) ** 2


@dataclass(frozen=True)
class PriorConfig:
    """The text-to-image prior: an SDXL-family diffusers pipeline."""

    unet_block_out_channels: tuple[int, ...]
    unet_attention_head_dim: tuple[int, ...]
    unet_transformer_layers_per_block: tuple[int, ...]
    vae_block_out_channels: tuple[int, ...]
    text_hidden_size: int
    text_layers: int
    text_heads: int
    steps: int = 4
    guidance_scale: float = 5.0


@dataclass(frozen=True)
class Preset:
    """A named model configuration and the window geometry it samples."""

    name: str
    width: int
    height: int
    fps: int
    window_latent_frames: int
    transformer: TransformerConfig
    vae: VAEConfig
    text: TextEncoderConfig
    prior: PriorConfig
    steps: int = 4
    guidance_scale: float = 6.0
    flow_shift: float = 7.0
    init_seed: int = 0
    window_overlap_latent_frames: int = 2  # latents shared by neighbouring co-denoising windows
    shipped_weights: str | None = None  # a weights folder (or file) inside the package, used when no weights are given
    buckets: tuple[tuple[int, int], ...] = ()  # (width, height) video sizes besides width x height, by aspect ratio

    @property
    def weights_folder(self) -> Path | None:
        """The preset's own weights (``shipped_weights`` in the package: a folder, or a JSON file naming its
        components' folders); None: random seeded weights."""
        if self.shipped_weights is None:
            return None
        return Path(__file__).parent / self.shipped_weights

    @property
    def window_frames(self) -> int:
        """Pixel frames decoded from one window: the causal VAE maps T latents to 4(T-1)+1 frames."""
        return self.vae.temporal_compression_ratio * (self.window_latent_frames - 1) + 1

    def replace(self, **changes: object) -> Preset:
        return dataclasses.replace(self, **changes)

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """The (width, height) video sizes the preset renders: its own first, then its other buckets."""
        return ((self.width, self.height), *(size for size in self.buckets if size != (self.width, self.height)))

    def sampling(self, steps: int | None = None, guidance: float | None = None) -> tuple[int, float]:
        """``(steps, guidance)``: the sampler steps and guidance scale asked for, the preset's where None."""
        return (self.steps if steps is None else steps, self.guidance_scale if guidance is None else guidance)

    def nearest_size(self, width: int, height: int) -> tuple[int, int]:
        """The size whose width/height is nearest an image of ``width`` x ``height``, the taller on a tie (the
        official inference's rule)."""
        aspect = width / height
        by_ratio = sorted(self.sizes, key=lambda size: size[0] / size[1])
        return min(by_ratio, key=lambda size: abs(size[0] / size[1] - aspect))

    def check_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``size`` if the preset renders it, else ``ValueError`` listing the sizes it does."""
        if size not in self.sizes:
            raise InputError(
                f"size {size[0]}x{size[1]} is not one of the {self.name} preset's sizes; choose auto or one of: "
                f"{', '.join(f'{w}x{h}' for w, h in self.sizes)}"
            )
        return size

    def at_size(self, size: tuple[int, int]) -> Preset:
        """The preset rendering at ``size``, one of :attr:`sizes`."""
        width, height = self.check_size(size)
        if (width, height) == (self.width, self.height):
            return self
        return dataclasses.replace(self, width=width, height=height)


def parse_size(text: str) -> tuple[int, int] | None:
    """``"auto"`` -> None (the size nearest the first frame's aspect ratio), ``"WxH"`` -> (W, H); else ``ValueError``."""
    if text.strip().lower() == "auto":
        return None
    width, sep, height = text.strip().lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise InputError(f"size {text!r} is not auto or WIDTHxHEIGHT such as 960x544")
    return int(width), int(height)


# The text encoders of the small presets: random (seeded) weights, frozen even when the toy preset is trained.
SMALL_TEXT = TextEncoderConfig(
    llm_hidden_size=32,
    llm_layers=3,
    llm_heads=2,
    llm_intermediate_size=64,
    vision_hidden_size=16,
    vision_layers=1,
    vision_heads=2,
    vision_image_size=32,
    vision_patch_size=8,
    clip_hidden_size=16,
    clip_layers=1,
    clip_heads=2,
    max_sequence_length=64,
)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        width=64,
        height=48,
        fps=24,
        window_latent_frames=9,
        transformer=TransformerConfig(
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            rope_axes_dim=(2, 2, 4),
        ),
        vae=VAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4),
        text=SMALL_TEXT,
        prior=PriorConfig(
            unet_block_out_channels=(16, 32),
            unet_attention_head_dim=(2, 4),
            unet_transformer_layers_per_block=(1, 1),
            vae_block_out_channels=(8, 16),
            text_hidden_size=16,
            text_layers=1,
            text_heads=2,
        ),
        buckets=((48, 64),),
    ),
    # The toy world's models (magic141.toy_world), trained on this project's CPUs: the real model's structure
    # (2C+1 input, VLM image tokens, guidance embedding, both window modes) at 64x48, 8 fps, 17 frames a window.
    "toy": Preset(
        name="toy",
        width=64,
        height=48,
        fps=8,
        window_latent_frames=5,
        transformer=TransformerConfig(
            num_attention_heads=4,
            attention_head_dim=32,
            num_layers=2,
            num_single_layers=2,
            num_refiner_layers=1,
            rope_axes_dim=(8, 12, 12),
        ),
        # 4x spatial compression: at 8x, a 64x48 frame is 8x6 latents and an object one or two of them, and the
        # decoder must draw a whole shape from one latent pixel (trained so, it drew blurred blobs of mixed colour).
        vae=VAEConfig(
            block_out_channels=(8, 16, 32, 32), layers_per_block=1, norm_num_groups=4, spatial_compression_ratio=4
        ),
        # Frozen seeded text encoders the transformer can read: the grammar's words as whole tokens (byte by byte,
        # "left" and "right" differ in letters a random model mixes), token embeddings at unit scale (at 0.02 the
        # words of a caption barely move the states), and a CLIP text model wide and deep enough that its pooled
        # vector (the modulation of every block) tells the captions' motions apart.
        text=dataclasses.replace(SMALL_TEXT, llm_embedding_std=1.0, clip_embedding_std=1.0, clip_hidden_size=64,
                                 clip_layers=2, tokenizer_words=toy_world.WORDS),
        prior=PriorConfig(
            unet_block_out_channels=(32, 64),
            unet_attention_head_dim=(4, 8),
            unet_transformer_layers_per_block=(1, 1),
            vae_block_out_channels=(16, 32),
            text_hidden_size=32,
            text_layers=2,
            text_heads=2,
            steps=20,
        ),
        # The shipped transformer is the DMD2 student: 4 steps of one forward pass each, at guidance 2 (an input;
        # at 3 it loses red on held-out looks, colour 91% against 97-99%, README "Not there yet").
        steps=4,
        guidance_scale=2.0,
        flow_shift=3.0,
        window_overlap_latent_frames=1,
        shipped_weights="toy_weights",
        buckets=((48, 64),),
    ),
    "full-540p": Preset(
        name="full-540p",
        width=960,
        height=544,
        fps=24,
        window_latent_frames=21,
        transformer=TransformerConfig(
            num_attention_heads=24,
            attention_head_dim=128,
            num_layers=20,
            num_single_layers=40,
            num_refiner_layers=2,
            rope_axes_dim=(16, 56, 56),
        ),
        vae=VAEConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
        text=TextEncoderConfig(
            llm_hidden_size=4096,
            llm_layers=32,
            llm_heads=32,
            llm_intermediate_size=14336,
            vision_hidden_size=1024,
            vision_layers=24,
            vision_heads=16,
            vision_image_size=336,
            vision_patch_size=14,
            clip_hidden_size=768,
            clip_layers=12,
            clip_heads=12,
            llm_vocab_size=128320,
            llm_kv_heads=8,
            clip_vocab_size=49408,
        ),
        prior=PriorConfig(
            unet_block_out_channels=(320, 640, 1280),
            unet_attention_head_dim=(5, 10, 20),
            unet_transformer_layers_per_block=(1, 2, 10),
            vae_block_out_channels=(128, 256, 512, 512),
            text_hidden_size=768,
            text_layers=12,
            text_heads=12,
            steps=28,
        ),
        flow_shift=5.0,
        # The official inference's 540p buckets, by aspect ratio 9:16, 3:4, 1:1, 4:3 (and 16:9, the preset's own).
        buckets=((544, 960), (624, 832), (720, 720), (832, 624)),
    ),
}


# The toy default's teacher: the CFG-distilled model DMD2 started from (one pass per Euler step, guidance an input).
PRESETS["toy-teacher"] = PRESETS["toy"].replace(name="toy-teacher", steps=50, shipped_weights="toy_weights/teacher.json")
# Its own teacher, the I2V model before CFG distillation: guidance only as true CFG (two passes per step).
PRESETS["toy-i2v"] = PRESETS["toy"].replace(name="toy-i2v", steps=50, guidance_scale=1.0,
                                             shipped_weights="toy_weights/i2v.json")


def default_preset_name() -> str:
    """The preset of a command given none: ``$MAGIC141_PRESET``, else ``toy``."""
    return os.environ.get(PRESET_ENV) or DEFAULT_PRESET


def get_preset(name: str) -> Preset:
    """Look a preset up by name; unknown names raise ``ValueError`` listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
