"""The video VAE (diffusers' HunyuanVideo causal 3D VAE, small) trained to reconstruct toy-world clips.

Steps cycle through clip lengths of 4k+1 frames, single images included: the I2V pipeline encodes its
first frame as a one-frame video, and that latent must decode to the same picture.

The loss is L1 plus MSE on pixels, averaged over the object's pixels and over the background's pixels
separately and summed: an object covers a few percent of a frame, and a loss averaged over all pixels is
met by a blur of the background's colour (a run trained so decoded red as brown). The decoder reads the
posterior's mean, which is what the pipelines encode (its variance is not trained, so sampling the posterior
is not meaningful for this VAE), and a small penalty on the mean, the KL term's, keeps the latents near unit
scale. The saved folder's ``scaling_factor`` is measured on training clips (one over the latents' standard
deviation), as Stable Diffusion's and HunyuanVideo's are, so the transformer sees latents of unit variance.
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

LATENT_PENALTY = 1e-3  # weight of the mean squared latent (the KL divergence's mean term)
OBJECT_DISTANCE = 0.1  # a pixel whose channels differ this much from its frame's corner pixel is the object's
CLIP_FRAMES = (1, 5, 1, 9)  # the clip length of step n is CLIP_FRAMES[n % 4]
SCALE_SAMPLES = 32
SCALE_SEED = 2**31 - 1  # clips of no training run's seed measure the scaling factor


@dataclass(frozen=True)
class VideoBatch:
    pixels: torch.Tensor  # (B, 3, F, H, W) in [-1, 1]


def reconstruction_errors(decoded: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 plus squared error, averaged over the object's pixels and over the background's, of images (B, 3, H, W)
    or videos (B, 3, F, H, W) in [-1, 1]. The background is plain, so the object's pixels are those whose channels
    differ from their frame's corner pixel by more than ``OBJECT_DISTANCE`` (objects never touch the border)."""
    error = (decoded - pixels).abs() + (decoded - pixels) ** 2
    obj = ((pixels - pixels[..., :1, :1]).abs().amax(1, keepdim=True) > OBJECT_DISTANCE).expand_as(pixels).float()
    object_error = (error * obj).sum() / obj.sum().clamp_min(1)
    background_error = (error * (1 - obj)).sum() / (1 - obj).sum().clamp_min(1)
    return object_error, background_error


class VaeTrainee(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, batch: VideoBatch) -> tuple[torch.Tensor, dict[str, float]]:
        pixels = batch.pixels
        latents = self.vae.encode(pixels).latent_dist.mean  # (B, C, T, h, w)
        decoded = self.vae.decode(latents).sample  # (B, 3, F, H, W)
        object_error, background_error = reconstruction_errors(decoded, pixels)
        penalty = latents.pow(2).mean()
        mse = F.mse_loss(decoded.detach(), pixels)
        psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # the [-1, 1] range spans 2
        loss = object_error + background_error + LATENT_PENALTY * penalty
        return loss, {"object": object_error.item(), "background": background_error.item(), "psnr": psnr.item()}


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

    def _sample(self, seed: int, step: int, index: int, frames: int) -> np.ndarray:
        rng = sample_rng(seed, step, index)
        captions = split_captions("train")
        caption = captions[int(torch.randint(len(captions), (1,), generator=rng))]
        start = float(torch.rand(1, generator=rng)) * 3.0
        scene = sample_scene(caption, self.width, self.height, int(torch.randint(2**31, (1,), generator=rng)))
        return render_video(scene, frames, self.fps, self.width, self.height, start=start)

    def batch(self, seed: int, step: int, samples: Sequence[int]) -> VideoBatch:
        frames = CLIP_FRAMES[step % len(CLIP_FRAMES)]
        return VideoBatch(_frames_tensor([self._sample(seed, step, index, frames) for index in samples]))

    @torch.no_grad()
    def scaling_factor(self, vae: torch.nn.Module) -> float:
        """One over the standard deviation of the latent means of held-aside training clips."""
        videos = [self._sample(SCALE_SEED, 0, index, max(CLIP_FRAMES)) for index in range(SCALE_SAMPLES)]
        pixels = _frames_tensor(videos)
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(8)])
        return float(1.0 / latents.std())

    def save(self, trainee: torch.nn.Module, folder: Path) -> None:
        vae = trainee.vae.eval()
        vae.register_to_config(scaling_factor=self.scaling_factor(vae))
        vae.save_pretrained(folder, safe_serialization=True)
