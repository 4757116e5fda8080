"""The image prior (paper Eq. 1): the first frame of the video made by a text-to-image model."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import PIL.Image
import torch
from diffusers import DiffusionPipeline

from magic141.components import build_prior_pipeline, fingerprint_modules
from magic141.presets import Preset, get_preset

logger = logging.getLogger(__name__)


class ImagePrior:
    """Text-to-image generation of the first frame with a diffusers pipeline (SDXL, Flux, Sana, ...)."""

    def __init__(self, pipeline: DiffusionPipeline, preset: Preset, device: str | torch.device = "cpu") -> None:
        self.pipeline = pipeline.to(device)
        self.preset = preset
        self.device = torch.device(device)

    @classmethod
    def from_preset(cls, preset: str | Preset, device: str | torch.device = "cpu") -> ImagePrior:
        preset = get_preset(preset) if isinstance(preset, str) else preset
        return cls(build_prior_pipeline(preset), preset, device)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, preset: str | Preset, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> ImagePrior:
        """A diffusers text-to-image pipeline folder (its ``model_index.json`` names the family)."""
        preset = get_preset(preset) if isinstance(preset, str) else preset
        if not (Path(folder) / "model_index.json").is_file():
            raise ValueError(f"prior folder {str(folder)!r} has no model_index.json; give a diffusers pipeline folder")
        if dtype is None:
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        pipeline = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True)
        pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline, preset, device)

    @cached_property
    def weights_fingerprint(self) -> str:
        modules = {name: c for name, c in self.pipeline.components.items() if isinstance(c, torch.nn.Module)}
        return fingerprint_modules(modules)

    @torch.no_grad()
    def __call__(self, prompt: str, seed: int, negative_prompt: str | None = None) -> PIL.Image.Image:
        """One image at the preset's video size for ``prompt``, reproducible for a given ``seed``."""
        config = self.preset.prior
        logger.info("generating the image prior with %d steps", config.steps)
        generator = torch.Generator("cpu").manual_seed(seed)
        result = self.pipeline(
            prompt=prompt,
            negative_prompt=negative_prompt,
            height=self.preset.height,
            width=self.preset.width,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            generator=generator,
        )
        return result.images[0]
