"""The image prior (paper Eq. 1): the first frame of the video made by a text-to-image model."""

from __future__ import annotations

import logging
import math
from functools import cached_property
from pathlib import Path

import PIL.Image
import torch
from diffusers import AutoPipelineForImage2Image, DiffusionPipeline

from magic141.components import build_prior_pipeline, fingerprint_modules
from magic141.pipeline import fit_image
from magic141.presets import Preset, get_preset
from magic141.utils import InputError

logger = logging.getLogger(__name__)


class ImagePrior:
    """Text-to-image generation of the first frame with a diffusers pipeline (SDXL, Flux, Sana, ...)."""

    def __init__(self, pipeline: DiffusionPipeline, preset: Preset, device: str | torch.device = "cpu") -> None:
        self.pipeline = pipeline.to(device)
        self.preset = preset
        self.device = torch.device(device)

    @classmethod
    def from_preset(cls, preset: str | Preset, device: str | torch.device = "cpu") -> ImagePrior:
        """The preset's prior: its own weights folder's ``prior/`` (the shipped toy prior), else seeded weights."""
        preset = get_preset(preset) if isinstance(preset, str) else preset
        if preset.weights_folder is not None:
            from magic141.weights import WeightPaths

            return cls.from_pretrained(WeightPaths.resolve(preset.weights_folder).prior, preset, device)
        return cls(build_prior_pipeline(preset), preset, device)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, preset: str | Preset, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> ImagePrior:
        """A diffusers text-to-image pipeline folder (its ``model_index.json`` names the family)."""
        preset = get_preset(preset) if isinstance(preset, str) else preset
        if not (Path(folder) / "model_index.json").is_file():
            raise InputError(f"prior folder {str(folder)!r} has no model_index.json; give a diffusers pipeline folder")
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

    @cached_property
    def image_to_image(self) -> DiffusionPipeline:
        """The same models as an image-to-image pipeline (diffusers ``from_pipe``: no weights copied)."""
        pipeline = AutoPipelineForImage2Image.from_pipe(self.pipeline)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    @torch.no_grad()
    def from_image(
        self, init: PIL.Image.Image, prompt: str, seed: int, strength: float, negative_prompt: str | None = None
    ) -> PIL.Image.Image:
        """One image at the preset's video size that starts from ``init`` (resized and centre-cropped).

        ``strength`` in (0, 1] is how much of ``init`` is noised away before denoising: near 0 keeps
        it almost as it is, 1 noises it away completely. At least one of the preset's prior steps
        must remain (``steps * strength >= 1``).
        """
        config = self.preset.prior
        if not math.isfinite(strength) or not 0.0 < strength <= 1.0:
            raise InputError(f"img2img strength must be in (0, 1], got {strength}")
        if int(config.steps * strength) < 1:
            raise InputError(
                f"img2img strength {strength} leaves no denoising step of {config.steps}; "
                f"use a strength of at least {1 / config.steps:g}"
            )
        logger.info("generating the image prior from an image with %d steps at strength %g", config.steps, strength)
        generator = torch.Generator("cpu").manual_seed(seed)
        result = self.image_to_image(
            prompt=prompt,
            negative_prompt=negative_prompt,
            image=fit_image(init, self.preset.width, self.preset.height),
            strength=strength,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            generator=generator,
        )
        return result.images[0]
