"""The image prior (paper Eq. 1): the first frame of the video made by a text-to-image model."""

from __future__ import annotations

import logging

import PIL.Image
import torch
from diffusers import StableDiffusionXLPipeline

from magic141.components import build_prior_pipeline, fingerprint_modules
from magic141.presets import Preset, get_preset

logger = logging.getLogger(__name__)


class ImagePrior:
    """Text-to-image generation of the first frame with a diffusers SDXL-family pipeline."""

    def __init__(self, pipeline: StableDiffusionXLPipeline, preset: Preset, device: str | torch.device = "cpu") -> None:
        self.pipeline = pipeline.to(device)
        self.preset = preset
        self.device = torch.device(device)

    @classmethod
    def from_preset(cls, preset: str | Preset, device: str | torch.device = "cpu") -> ImagePrior:
        preset = get_preset(preset) if isinstance(preset, str) else preset
        return cls(build_prior_pipeline(preset), preset, device)

    @property
    def weights_fingerprint(self) -> str:
        pipe = self.pipeline
        return fingerprint_modules({"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder,
                                    "text_encoder_2": pipe.text_encoder_2})

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
