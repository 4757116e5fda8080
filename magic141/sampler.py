"""Few-step flow-matching Euler sampling of one I2V window, or of overlapping windows co-denoised.

Magic 1-For-1 distils the model twice: DMD2 step distillation (4 steps) and CFG distillation (the
guidance scale w is an input of the transformer, embedded as ``w * 1000``), so each step costs one
forward pass. Non-distilled weights can instead use true classifier-free guidance: two passes per
step, conditional and negative, mixed as ``neg + s * (cond - neg)``.

Co-denoising samples one long latent timeline: at every step each window's velocity is predicted
on its own (``predict`` may spread the windows over many devices), the predictions are fused with
the windows' ramp weights, and one scheduler step moves the whole timeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel

from magic141.conditioning import IMAGE_FRAMES, image_condition, model_input
from magic141.utils import InputError
from magic141.windows import Window, fusion_weights

# diffusers' HunyuanVideo I2V starts from noise with a trace of the image latent mixed in (t = 0.999).
NOISE_LEVEL = 0.999


@dataclass(frozen=True)
class PromptEmbeddings:
    """Encoded prompt: VLM tokens (image tokens first) with their mask, and the pooled CLIP vector."""

    embeds: torch.Tensor  # (B, L, D_text)
    attention_mask: torch.Tensor  # (B, L)
    pooled: torch.Tensor  # (B, D_pooled)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PromptEmbeddings:
        return PromptEmbeddings(
            self.embeds.to(device, dtype), self.attention_mask.to(device, dtype), self.pooled.to(device, dtype)
        )


@dataclass(frozen=True)
class SamplerConfig:
    """Sampling hyper-parameters of one window."""

    steps: int = 4
    guidance_scale: float = 6.0
    true_cfg_scale: float = 1.0
    flow_shift: float = 7.0
    first_frame_anchor: bool | None = None  # the first latent frame := the image's; None: as the convention says

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")
        if self.true_cfg_scale < 1.0:
            raise InputError(f"true_cfg_scale must be >= 1 (1 disables true CFG), got {self.true_cfg_scale}")


def flow_sigmas(steps: int) -> np.ndarray:
    """Unshifted sigmas 1 -> 1/steps; the scheduler applies the flow shift."""
    return np.linspace(1.0, 0.0, steps + 1)[:-1]


def _scheduler(config: SamplerConfig, device: torch.device) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=config.flow_shift)
    scheduler.set_timesteps(sigmas=flow_sigmas(config.steps), device=device)
    return scheduler


def start_noise_level(convention: str) -> float:
    """How much of the starting point is noise: :data:`NOISE_LEVEL` (``diffusers``), or all of it (``official``)."""
    return 1.0 if convention == "official" else NOISE_LEVEL


def anchors_first_frame(convention: str, config: SamplerConfig | None = None) -> bool:
    """Whether sampling ends with the first latent frame set to the first frame's own latent: as ``config``
    asks, else by the convention (``diffusers``: yes, the video starts with the image it was given, and
    diffusers' pipeline drops the generated frame 0 for the same reason; ``official``: the generated one stays)."""
    if config is not None and config.first_frame_anchor is not None:
        return config.first_frame_anchor
    return convention != "official"


def anchored(latents: torch.Tensor, image_latents: torch.Tensor) -> torch.Tensor:
    """``latents`` (B, C, T, h, w) with latent frame 0 replaced by the first frame's latent (B, C, 1, h, w).

    The causal video VAE encodes a video's first frame on its own, so its latent is exactly the first latent
    frame of the video; the later frames are left as sampled.
    """
    return torch.cat([image_latents.to(latents.dtype), latents[:, :, 1:]], dim=2)


def initial_latents(noise: torch.Tensor, image_latents: torch.Tensor, noise_level: float = NOISE_LEVEL) -> torch.Tensor:
    """The starting point: noise with a trace (``1 - noise_level``) of the first-frame latent in every frame."""
    return noise * noise_level + image_latents.to(noise.dtype) * (1 - noise_level)


def denoise(
    transformer: HunyuanVideoTransformer3DModel,
    latents: torch.Tensor,
    image_latents: torch.Tensor | None,
    timestep: torch.Tensor,
    prompt: PromptEmbeddings,
    guidance_scale: float,
    true_cfg_scale: float = 1.0,
    negative: PromptEmbeddings | None = None,
    *,
    image_frames: str = IMAGE_FRAMES[0],
) -> torch.Tensor:
    """One velocity prediction for ``latents`` (B, C, T, h, w) conditioned on the first-frame latent.

    The first-frame latent fills the image channels in the ``image_frames`` layout the weights declare
    (:func:`magic141.conditioning.image_condition`). Without ``image_latents`` (a co-denoising window that
    does not start the video) the image channels and the mask are zero.
    """
    dtype = transformer.dtype
    if image_latents is None:
        image = torch.zeros_like(latents)
        mask = latents.new_zeros(latents.shape[0], 1, *latents.shape[2:])
    else:
        image, mask = image_condition(image_latents, latents.shape[2], image_frames)
    hidden = model_input(latents, image, mask).to(dtype)  # (B, 2C+1, T, h, w)
    batch = latents.shape[0]
    guidance = None
    if transformer.config.guidance_embeds:
        guidance = torch.full((batch,), guidance_scale * 1000.0, dtype=dtype, device=latents.device)
    t = timestep.expand(batch).to(latents.dtype)

    def predict(embeddings: PromptEmbeddings) -> torch.Tensor:
        embeddings = embeddings.to(latents.device, dtype)
        return transformer(
            hidden_states=hidden,
            timestep=t,
            encoder_hidden_states=embeddings.embeds,
            encoder_attention_mask=embeddings.attention_mask,
            pooled_projections=embeddings.pooled,
            guidance=guidance,
            return_dict=False,
        )[0]

    velocity = predict(prompt)
    if true_cfg_scale > 1.0 and negative is not None:
        negative_velocity = predict(negative)
        velocity = negative_velocity + true_cfg_scale * (velocity - negative_velocity)
    return velocity


@torch.no_grad()
def sample_window(
    transformer: HunyuanVideoTransformer3DModel,
    noise: torch.Tensor,
    image_latents: torch.Tensor,
    prompt: PromptEmbeddings,
    config: SamplerConfig,
    negative: PromptEmbeddings | None = None,
    on_step: Callable[[int, int], None] | None = None,
    noise_level: float = NOISE_LEVEL,
    anchor: bool = False,
    *,
    image_frames: str = IMAGE_FRAMES[0],
) -> torch.Tensor:
    """Sample one window's latents from ``noise`` (B, C, T, h, w), float32, with ``config.steps`` Euler steps.

    ``image_latents`` (B, C, 1, h, w) is the scaled VAE latent of the first frame, in the image channels'
    ``image_frames`` layout; sampling starts at :func:`initial_latents` with ``noise_level``; with ``anchor``
    the result's first latent frame is that latent (:func:`anchored`).
    """
    scheduler = _scheduler(config, noise.device)
    latents = initial_latents(noise, image_latents, noise_level)
    for index, timestep in enumerate(scheduler.timesteps):
        velocity = denoise(
            transformer,
            latents,
            image_latents,
            timestep,
            prompt,
            config.guidance_scale,
            config.true_cfg_scale,
            negative,
            image_frames=image_frames,
        )
        latents = scheduler.step(velocity, timestep, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(index + 1, config.steps)
    return anchored(latents, image_latents) if anchor else latents


WindowPredictor = Callable[[int, torch.Tensor, list[tuple[Window, torch.Tensor]]], list[torch.Tensor]]


@torch.no_grad()
def sample_codenoise(
    noise: torch.Tensor,
    image_latents: torch.Tensor,
    windows: list[Window],
    config: SamplerConfig,
    predict: WindowPredictor,
    on_step: Callable[[int, int], None] | None = None,
    noise_level: float = NOISE_LEVEL,
    anchor: bool = False,
) -> torch.Tensor:
    """Co-denoise the timeline ``noise`` (1, C, L, h, w) covered by ``windows``; float32 latents.

    ``predict(step, timestep, [(window, latents), ...])`` returns one velocity per window, each
    (1, C, T, h, w); window 0 carries the image condition (later ones too where the weights' layout says so:
    :meth:`magic141.pipeline.Magic141Pipeline.predict_window`). The result does not depend on how
    ``predict`` groups or places the windows as long as each prediction is a function of its input.
    With ``anchor`` the timeline's first latent frame is the first frame's latent (:func:`anchored`).
    """
    if noise.shape[2] != windows[-1].latent_stop or windows[0].latent_start != 0:
        raise ValueError(
            f"windows cover latents 0-{windows[-1].latent_stop} but the timeline has {noise.shape[2]}"
        )
    weights = [torch.from_numpy(w).float().to(noise.device).view(1, 1, -1, 1, 1) for w in fusion_weights(windows)]
    scheduler = _scheduler(config, noise.device)
    latents = initial_latents(noise, image_latents, noise_level)
    for index, timestep in enumerate(scheduler.timesteps):
        inputs = [(window, latents[:, :, window.latent_start : window.latent_stop]) for window in windows]
        velocities = predict(index, timestep, inputs)
        if len(velocities) != len(windows):
            raise RuntimeError(f"predict returned {len(velocities)} velocities for {len(windows)} windows")
        fused = torch.zeros_like(latents)
        for window, weight, velocity in zip(windows, weights, velocities):
            fused[:, :, window.latent_start : window.latent_stop] += weight * velocity.to(fused)
        latents = scheduler.step(fused, timestep, latents, return_dict=False)[0]
        if on_step is not None:
            on_step(index + 1, config.steps)
    return anchored(latents, image_latents) if anchor else latents
