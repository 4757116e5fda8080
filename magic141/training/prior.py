"""The text-to-image prior (the preset's SDXL-family diffusers pipeline) trained on the toy world's first frames.

The prior makes the first frame of a video from its caption (paper Eq. 1). Its two trained parts are trained in
one run, in two phases: the image autoencoder for the first ``autoencoder_steps`` steps (with the video VAE's
loss, :func:`magic141.training.vae.reconstruction_errors`: the object's pixels weigh as much as the background's),
then the UNet on the frozen autoencoder's latents, on the noise schedule its sampler uses. The UNet
predicts the velocity ``v = sqrt(a) eps - sqrt(1 - a) x0`` (diffusers' ``v_prediction``, declared in the saved
scheduler) rather than the noise: a noise prediction's error is amplified by ``sqrt((1 - a) / a)`` in the image
it implies, over 100x at the schedule's noisiest step, and a small model's few-step samples are then noise. The latents are scaled to unit variance by a factor measured on held-aside frames
when the UNet phase starts; it is kept in the checkpoint and saved as the autoencoder's ``scaling_factor``.

The two CLIP text encoders stay frozen at the preset's seeded weights: the UNet's cross-attention learns to read
them. One caption in ten is dropped to SDXL's unconditional input, all-zero text states (the pipeline's
``force_zeros_for_empty_prompt``), so the prior is sampled with the preset's classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from magic141.presets import Preset, get_preset
from magic141.toy_world import all_captions, render_frame, sample_scene, split_captions
from magic141.training.loop import sample_rng
from magic141.training.vae import LATENT_PENALTY, reconstruction_errors

CAPTION_DROPOUT = 0.1
SCALE_SAMPLES = 64
PREDICTION = "v_prediction"
SCALE_SEED = 2**31 - 1  # frames of no training run's seed measure the latents' scale


@dataclass(frozen=True)
class PriorBatch:
    pixels: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    noise: torch.Tensor  # (B, 4, h, w): the diffusion noise (unused in the autoencoder phase)
    timestep: torch.Tensor  # (B,) integer diffusion timesteps
    text: torch.Tensor  # (B, L, 2D) both encoders' penultimate states
    pooled: torch.Tensor  # (B, D)
    autoencoder: bool  # which phase the step trains


@lru_cache(maxsize=2)
def _caption_states(preset_name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every caption's (text states, pooled vector) from the preset's frozen prior text encoders."""
    from magic141.components import build_prior_pipeline

    pipe = build_prior_pipeline(get_preset(preset_name))
    prompts = [c.text for c in all_captions()]
    with torch.no_grad():
        text, _, pooled, _ = pipe.encode_prompt(prompts, device=torch.device("cpu"), do_classifier_free_guidance=False)
    return {prompt: (text[i], pooled[i]) for i, prompt in enumerate(prompts)}


class PriorTrainee(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module, unet: torch.nn.Module, alphas_cumprod: torch.Tensor,
                 time_ids: torch.Tensor, scale_pixels: torch.Tensor) -> None:
        super().__init__()
        self.vae, self.unet = vae, unet
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.register_buffer("time_ids", time_ids)
        self.register_buffer("latent_scale", torch.zeros(()))  # 0 until the UNet phase measures it
        self.scale_pixels = scale_pixels

    @torch.no_grad()
    def measure_scale(self) -> float:
        """One over the standard deviation of the autoencoder's latent means on the held-aside frames."""
        latents = self.vae.encode(self.scale_pixels).latent_dist.mean
        return float(1.0 / latents.std())

    def forward(self, batch: PriorBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if batch.autoencoder:
            latents = self.vae.encode(batch.pixels).latent_dist.mean
            decoded = self.vae.decode(latents).sample
            object_error, background_error = reconstruction_errors(decoded, batch.pixels)
            psnr = 10 * torch.log10(4.0 / F.mse_loss(decoded.detach(), batch.pixels).clamp_min(1e-10))
            loss = object_error + background_error + LATENT_PENALTY * latents.pow(2).mean()
            return loss, {"object": object_error.item(), "background": background_error.item(), "psnr": psnr.item()}
        if float(self.latent_scale) == 0.0:
            self.latent_scale.fill_(self.measure_scale())
        with torch.no_grad():
            latents = self.vae.encode(batch.pixels).latent_dist.mean * self.latent_scale
        alpha = self.alphas_cumprod[batch.timestep].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * batch.noise
        time_ids = self.time_ids.expand(len(noisy), -1)
        predicted = self.unet(noisy, batch.timestep, encoder_hidden_states=batch.text,
                              added_cond_kwargs={"text_embeds": batch.pooled, "time_ids": time_ids}).sample
        velocity = alpha.sqrt() * batch.noise - (1 - alpha).sqrt() * latents
        return F.mse_loss(predicted, velocity), {}


@dataclass(frozen=True)
class PriorStage:
    """The ``preset``'s text-to-image prior: its autoencoder, then its UNet."""

    preset: Preset
    autoencoder_steps: int = 800
    name: str = "prior"
    unused_parameters: bool = True  # each phase leaves the other part without gradients (DDP must know)

    def describe(self) -> dict[str, Any]:
        return {"preset": self.preset.name, "prior": asdict(self.preset.prior),
                "frame": [self.preset.width, self.preset.height], "autoencoder_steps": self.autoencoder_steps,
                "prediction": PREDICTION}

    def _pixels(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1

    def _frame(self, seed: int, step: int, index: int) -> tuple[np.ndarray, str, torch.Generator]:
        rng = sample_rng(seed, step, index)
        captions = split_captions("train")
        caption = captions[int(torch.randint(len(captions), (1,), generator=rng))]
        scene = sample_scene(caption, self.preset.width, self.preset.height, int(torch.randint(2**31, (1,), generator=rng)))
        return render_frame(scene, 0.0, self.preset.width, self.preset.height), caption.text, rng

    def build(self, seed: int) -> torch.nn.Module:
        from diffusers import DDPMScheduler

        from magic141.components import build_prior_pipeline, build_prior_unet, build_prior_vae

        config = self.preset.prior
        scheduler = DDPMScheduler.from_config(build_prior_pipeline(self.preset).scheduler.config)
        torch.manual_seed(seed)
        unet = build_prior_unet(config, config.text_hidden_size)
        vae = build_prior_vae(config, self.preset.height)
        height, width = self.preset.height, self.preset.width
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
        scale_pixels = self._pixels([self._frame(SCALE_SEED, 0, i)[0] for i in range(SCALE_SAMPLES)])
        return PriorTrainee(vae.train(), unet.train(), scheduler.alphas_cumprod.float(), time_ids, scale_pixels)

    def batch(self, seed: int, step: int, samples: Sequence[int]) -> PriorBatch:
        autoencoder = step < self.autoencoder_steps
        states = _caption_states(self.preset.name)
        ratio = 2 ** (len(self.preset.prior.vae_block_out_channels) - 1)
        shape = (4, self.preset.height // ratio, self.preset.width // ratio)
        frames, noises, timesteps, texts, pooled = [], [], [], [], []
        for index in samples:
            frame, caption, rng = self._frame(seed, step, index)
            text, vector = states[caption]
            if float(torch.rand(1, generator=rng)) < CAPTION_DROPOUT:
                text, vector = torch.zeros_like(text), torch.zeros_like(vector)
            frames.append(frame)
            noises.append(torch.randn(shape, generator=rng))
            timesteps.append(int(torch.randint(1000, (1,), generator=rng)))
            texts.append(text)
            pooled.append(vector)
        return PriorBatch(self._pixels(frames), torch.stack(noises), torch.tensor(timesteps), torch.stack(texts),
                          torch.stack(pooled), autoencoder)

    def save(self, trainee: torch.nn.Module, folder: Path) -> None:
        from diffusers import StableDiffusionXLPipeline

        from magic141.components import build_prior_pipeline

        scale = float(trainee.latent_scale) or trainee.measure_scale()
        trainee.vae.register_to_config(scaling_factor=scale)
        seeded = build_prior_pipeline(self.preset)
        scheduler = type(seeded.scheduler).from_config(seeded.scheduler.config, prediction_type=PREDICTION)
        pipe = StableDiffusionXLPipeline(**{**seeded.components, "vae": trainee.vae.eval(), "unet": trainee.unet.eval(),
                                            "scheduler": scheduler})
        pipe.save_pretrained(folder, safe_serialization=True)
