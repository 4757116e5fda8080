"""Build every model component of a preset with random weights, tokenizers made in code.

Weights are drawn from a generator seeded by ``preset.init_seed``, so the same preset always builds
the same model (and the same weights fingerprint).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLHunyuanVideo,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoImageToVideoPipeline,
    HunyuanVideoTransformer3DModel,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from magic141.conditioning import CONVENTIONS, IMAGE_FRAMES, PROMPT_FORMATS, prompt_template_for
from magic141.presets import Preset, PriorConfig, TextEncoderConfig, TransformerConfig, VAEConfig
from magic141.tokenizers import build_clip_tokenizer, build_llama_tokenizer

# Offsets from ``preset.init_seed`` of the generators that draw the prior and the I2V model's VAE and text encoders.
PRIOR_SEED_OFFSET = 1
ENCODER_SEED_OFFSET = 2


@dataclass
class I2VComponents:
    """Everything the image-to-video sampler needs, in the roles of diffusers' HunyuanVideo I2V pipeline."""

    transformer: HunyuanVideoTransformer3DModel
    vae: AutoencoderKLHunyuanVideo
    text_encoder: LlavaForConditionalGeneration
    tokenizer: PreTrainedTokenizerFast
    text_encoder_2: CLIPTextModel
    tokenizer_2: CLIPTokenizer
    image_processor: CLIPImageProcessor
    scheduler: FlowMatchEulerDiscreteScheduler
    prompt_template: dict[str, Any]
    prompt_format: str = PROMPT_FORMATS[0]  # how prompt and image become text tokens: magic141.prompt_encoding
    convention: str = CONVENTIONS[0]  # how the reference reaches the model, where sampling starts (conditioning.py)
    image_frames: str = IMAGE_FRAMES[0]  # which latent frames' image channels hold the first frame (conditioning.py)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {
            "transformer": self.transformer,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
        }

    def diffusers_pipeline(self) -> HunyuanVideoImageToVideoPipeline:
        """diffusers' own HunyuanVideo I2V pipeline over these components (progress bar off)."""
        pipe = HunyuanVideoImageToVideoPipeline(
            transformer=self.transformer,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            image_processor=self.image_processor,
            scheduler=self.scheduler,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def build_transformer(
    config: TransformerConfig, text: TextEncoderConfig, image_condition: bool = True
) -> HunyuanVideoTransformer3DModel:
    """The I2V transformer (2C+1 inputs, ``latent_concat``), or without ``image_condition`` its T2V base (C inputs)."""
    return HunyuanVideoTransformer3DModel(
        in_channels=config.in_channels if image_condition else config.latent_channels,
        out_channels=config.latent_channels,
        num_attention_heads=config.num_attention_heads,
        attention_head_dim=config.attention_head_dim,
        num_layers=config.num_layers,
        num_single_layers=config.num_single_layers,
        num_refiner_layers=config.num_refiner_layers,
        mlp_ratio=config.mlp_ratio,
        patch_size=config.patch_size,
        patch_size_t=config.patch_size_t,
        guidance_embeds=config.guidance_embeds,
        text_embed_dim=text.llm_hidden_size,
        pooled_projection_dim=text.clip_hidden_size,
        rope_axes_dim=config.rope_axes_dim,
        image_condition_type="latent_concat" if image_condition else None,
    )


def build_vae(config: VAEConfig) -> AutoencoderKLHunyuanVideo:
    blocks = len(config.block_out_channels)
    return AutoencoderKLHunyuanVideo(
        latent_channels=config.latent_channels,
        down_block_types=("HunyuanVideoDownBlock3D",) * blocks,
        up_block_types=("HunyuanVideoUpBlock3D",) * blocks,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        scaling_factor=config.scaling_factor,
        spatial_compression_ratio=config.spatial_compression_ratio,
        temporal_compression_ratio=config.temporal_compression_ratio,
    )


def build_vlm(config: TextEncoderConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    """A LLaVA model: Llama language model with a CLIP vision tower whose tokens replace ``<image>``."""
    text_config = LlamaConfig(
        vocab_size=config.llm_vocab_size or len(tokenizer),
        hidden_size=config.llm_hidden_size,
        intermediate_size=config.llm_intermediate_size,
        num_hidden_layers=config.llm_layers,
        num_attention_heads=config.llm_heads,
        num_key_value_heads=config.llm_kv_heads or config.llm_heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=config.vision_hidden_size,
        intermediate_size=4 * config.vision_hidden_size,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.vision_image_size,
        patch_size=config.vision_patch_size,
        projection_dim=config.vision_hidden_size,
    )
    llava_config = LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=config.image_tokens,
    )
    # diffusers' prompt encoder reads pad_token_id from the top-level config, which LlavaConfig lacks.
    llava_config.pad_token_id = tokenizer.pad_token_id
    return _rescale_embeddings(LlavaForConditionalGeneration(llava_config), config.llm_embedding_std)


def _rescale_embeddings(model: PreTrainedModel, std: float) -> PreTrainedModel:
    """``model`` with its input token embeddings scaled from the config's initialiser std to ``std``."""
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(std / model.config.get_text_config().initializer_range)
    return model


def build_clip_text(
    hidden: int,
    layers: int,
    heads: int,
    tokenizer: CLIPTokenizer,
    projection: bool = False,
    vocab_size: int | None = None,
) -> torch.nn.Module:
    """A CLIP text model for ``tokenizer``; ``vocab_size`` widens the embedding table to a real model's."""
    config = CLIPTextConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def build_image_processor(image_size: int) -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
    )


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_i2v_components(
    preset: Preset, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> I2VComponents:
    """The image-to-video components of ``preset`` with seeded random weights.

    Weights are created directly on ``device`` ("meta" gives shapes only, for sizing the full
    model anywhere); the transformer and the text encoders in ``dtype``, the VAE in float32, as
    :func:`magic141.weights.load_i2v_components` loads them.
    """
    text = preset.text
    tokenizer = build_llama_tokenizer(text.tokenizer_words)
    tokenizer_2 = build_clip_tokenizer(words=text.tokenizer_words)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(preset.init_seed)
        with _default_dtype(dtype):
            transformer = build_transformer(preset.transformer, text)
        # The VAE and text encoders from a seed of their own: resizing the transformer leaves them as they are.
        torch.manual_seed(preset.init_seed + ENCODER_SEED_OFFSET)
        vae = build_vae(preset.vae)
        with _default_dtype(dtype):
            text_encoder = build_vlm(text, tokenizer)
            text_encoder_2 = _rescale_embeddings(build_clip_text(
                text.clip_hidden_size, text.clip_layers, text.clip_heads, tokenizer_2, vocab_size=text.clip_vocab_size
            ), text.clip_embedding_std)
    components = I2VComponents(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        image_processor=build_image_processor(preset.text.vision_image_size),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=preset.flow_shift),
        prompt_template=prompt_template_for(tokenizer, preset.text.image_tokens),
    )
    for module in components.modules().values():
        module.eval().requires_grad_(False)
    return components


def build_prior_unet(config: PriorConfig, cross_attention_dim: int) -> UNet2DConditionModel:
    """The prior's SDXL UNet at random weights (drawn from torch's current generator)."""
    levels = len(config.unet_block_out_channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1)
    up = ("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
    time_embed_dim = 8
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_block_out_channels,
        layers_per_block=1,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=config.unet_attention_head_dim,
        transformer_layers_per_block=config.unet_transformer_layers_per_block,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # SDXL's added condition: pooled text (projection) + 6 size/crop numbers, each time-embedded.
        projection_class_embeddings_input_dim=cross_attention_dim + 6 * time_embed_dim,
        cross_attention_dim=2 * cross_attention_dim,
        norm_num_groups=min(8, config.unet_block_out_channels[0]),
    )


def build_prior_vae(config: PriorConfig, sample_size: int) -> AutoencoderKL:
    """The prior's image autoencoder at random weights (drawn from torch's current generator)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_block_out_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_block_out_channels),
        block_out_channels=config.vae_block_out_channels,
        latent_channels=4,
        norm_num_groups=min(8, config.vae_block_out_channels[0]),
        sample_size=sample_size,
    )


def build_prior_pipeline(preset: Preset) -> StableDiffusionXLPipeline:
    """The text-to-image prior: an SDXL pipeline with seeded random weights."""
    config = preset.prior
    tokenizer = build_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(preset.init_seed + PRIOR_SEED_OFFSET)
        unet = build_prior_unet(config, config.text_hidden_size)
        vae = build_prior_vae(config, preset.height)
        text_encoder = build_clip_text(config.text_hidden_size, config.text_layers, config.text_heads, tokenizer)
        text_encoder_2 = build_clip_text(
            config.text_hidden_size, config.text_layers, config.text_heads, tokenizer, projection=True
        )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(timestep_spacing="trailing"),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fingerprint_modules(modules: dict[str, torch.nn.Module]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every tensor of the given modules."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        for key, tensor in sorted(modules[name].state_dict().items()):
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}.{key}:{data.dtype}:{tuple(data.shape)}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def vae_encoder_fingerprint(vae: AutoencoderKLHunyuanVideo) -> str:
    """sha256 of what a VAE's scaled latents depend on: its encoder's weights and its scaling factor. A VAE whose
    decoder alone was refined keeps it, and so every latent encoded with it stays valid."""
    modules = fingerprint_modules({"encoder": vae.encoder, "quant_conv": vae.quant_conv})
    return hashlib.sha256(f"{modules}:{float(vae.config.scaling_factor)!r}".encode()).hexdigest()
