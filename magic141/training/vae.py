"""The video VAE (diffusers' HunyuanVideo causal 3D VAE, small) trained to reconstruct toy-world clips.

Steps cycle through clip lengths of 4k+1 frames, single images included: the I2V pipeline encodes its
first frame as a one-frame video, and that latent must decode to the same picture. The loss is L1 plus
MSE on pixels and a small KL term that keeps the latents near a unit Gaussian. The saved folder's
``scaling_factor`` is measured on training clips (one over the latents' standard deviation), as Stable
Diffusion's and HunyuanVideo's are, so the transformer sees latents of unit variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from magic141.components import build_vae
from magic141.presets import VAEConfig
from magic141.toy_world import render_video, sample_scene, split_captions
from magic141.training.loop import sample_rng

KL_WEIGHT = 1e-4
CLIP_FRAMES = (1, 5, 1, 9)  # the clip length of step n is CLIP_FRAMES[n % 4]
SCALE_SAMPLES = 32
SCALE_SEED = 2**31 - 1  # clips of no training run's seed measure the scaling factor


@dataclass(frozen=True)
class VideoBatch:
    pixels: torch.Tensor  # (B, 3, F, H, W) in [-1, 1]
    noise: torch.Tensor  # (B, C, T, h, w) for the posterior sample


class VaeTrainee(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, batch: VideoBatch) -> tuple[torch.Tensor, dict[str, float]]:
        posterior = self.vae.encode(batch.pixels).latent_dist
        latents = posterior.mean + posterior.std * batch.noise
        decoded = self.vae.decode(latents).sample
        l1 = F.l1_loss(decoded, batch.pixels)
        mse = F.mse_loss(decoded, batch.pixels)
        kl = posterior.kl().mean() / latents[0].numel()
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))  # the [-1, 1] range spans 2
        return l1 + mse + KL_WEIGHT * kl, {"l1": l1.item(), "psnr": psnr.item(), "kl": kl.item()}


def _frames_tensor(videos: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (F, H, W, 3) videos -> (B, 3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1


@dataclass(frozen=True)
class VaeStage:
    """The toy world's video VAE at the preset's frame size and frame rate."""

    config: VAEConfig
    width: int
    height: int
    fps: int
    name: str = "vae"

    def describe(self) -> dict[str, Any]:
        return {"vae": asdict(self.config), "frame": [self.width, self.height], "fps": self.fps, "clips": CLIP_FRAMES}

    def build(self, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return VaeTrainee(build_vae(self.config))

    def _latent_shape(self, frames: int) -> tuple[int, int, int, int]:
        ratio = self.config.spatial_compression_ratio
        return (self.config.latent_channels, (frames - 1) // self.config.temporal_compression_ratio + 1,
                self.height // ratio, self.width // ratio)

    def _sample(self, seed: int, step: int, index: int, frames: int) -> tuple[np.ndarray, torch.Tensor]:
        rng = sample_rng(seed, step, index)
        captions = split_captions("train")
        caption = captions[int(torch.randint(len(captions), (1,), generator=rng))]
        start = float(torch.rand(1, generator=rng)) * 3.0
        scene = sample_scene(caption, self.width, self.height, int(torch.randint(2**31, (1,), generator=rng)))
        video = render_video(scene, frames, self.fps, self.width, self.height, start=start)
        return video, torch.randn(self._latent_shape(frames), generator=rng)

    def batch(self, seed: int, step: int, samples: Sequence[int]) -> VideoBatch:
        frames = CLIP_FRAMES[step % len(CLIP_FRAMES)]
        videos, noise = zip(*(self._sample(seed, step, index, frames) for index in samples))
        return VideoBatch(_frames_tensor(videos), torch.stack(noise))

    @torch.no_grad()
    def scaling_factor(self, vae: torch.nn.Module) -> float:
        """One over the standard deviation of the latent means of held-aside training clips."""
        videos = [self._sample(SCALE_SEED, 0, index, max(CLIP_FRAMES))[0] for index in range(SCALE_SAMPLES)]
        pixels = _frames_tensor(videos)
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(8)])
        return float(1.0 / latents.std())

    def save(self, trainee: torch.nn.Module, folder: Path) -> None:
        vae = trainee.vae.eval()
        vae.register_to_config(scaling_factor=self.scaling_factor(vae))
        vae.save_pretrained(folder, safe_serialization=True)
