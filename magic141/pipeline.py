"""The Magic 1-For-1 image-to-video pipeline: prompt + first frame -> stream of decoded windows.

Prompt encoding reuses diffusers' HunyuanVideo I2V encoder (VLM image tokens in front of the text
tokens, pooled CLIP vector); sampling is the few-step sampler of :mod:`magic141.sampler`; windows are
decoded one at a time and yielded, so memory does not grow with the video's length.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers.video_processor import VideoProcessor
from optimum.quanto import quantization_map

from magic141.components import I2VComponents, build_i2v_components, fingerprint_modules
from magic141.conditioning import CONVENTIONS, IMAGE_FRAMES, PROMPT_FORMATS
from magic141.executor import (
    LocalExecutor,
    ProgressCallback,
    RenderedWindow,
    RenderJob,
    posterior_seed,
    render_windows,
    timeline_noise,
    window_noise,
)
from magic141.presets import Preset, get_preset
from magic141.prompt_encoding import encode_magic141
from magic141.quantization import QUANTIZED_COMPONENTS, quantize_weights
from magic141.sampler import (
    PromptEmbeddings,
    SamplerConfig,
    anchors_first_frame,
    denoise,
    sample_window,
    start_noise_level,
)
from magic141.utils import InputError
from magic141.weights import WeightPaths, load_i2v_components
from magic141.windows import Window, plan_windows

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Conditioning:
    """What every window of one video is conditioned on."""

    positive: PromptEmbeddings
    negative: PromptEmbeddings | None
    image_latents: torch.Tensor  # (1, C, 1, h, w) scaled VAE latent of the reference image
    first_frame: np.ndarray  # (H, W, 3) uint8: the reference image fitted to the video size

    def cpu(self) -> Conditioning:
        """A copy whose tensors live on the CPU, to send to other processes."""
        return Conditioning(
            self.positive.to("cpu", self.positive.embeds.dtype),
            None if self.negative is None else self.negative.to("cpu", self.negative.embeds.dtype),
            self.image_latents.cpu(),
            self.first_frame,
        )


def plan_video(preset: Preset, num_frames: int, mode: str = "chained", overlap: int | None = None) -> list[Window]:
    """The windows of a ``num_frames`` video at the preset's window size and default overlap."""
    return plan_windows(
        mode,
        num_frames,
        preset.window_latent_frames,
        preset.window_overlap_latent_frames if overlap is None else overlap,
        preset.vae.temporal_compression_ratio,
    )


def fit_image_official(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """As the official inference fits its reference: resize (bilinear) to cover ``width`` x ``height`` keeping the
    aspect ratio, sides truncated, then centre-crop with the rounded offsets of torchvision's ``CenterCrop``."""
    image = image.convert("RGB")
    ratio = image.width / image.height
    if ratio > width / height:
        size = (int(height * ratio), height)
    else:
        size = (width, int(width / ratio))
    resized = image.resize(size, PIL.Image.Resampling.BILINEAR)
    top, left = int(round((resized.height - height) / 2.0)), int(round((resized.width - width) / 2.0))
    return resized.crop((left, top, left + width, top + height))


def fit_image(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Resize to cover ``width`` x ``height`` and centre-crop, in RGB."""
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))), PIL.Image.Resampling.BICUBIC
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


class Magic141Pipeline:
    """Image-to-video generation with the Magic 1-For-1 recipe on top of diffusers' HunyuanVideo models."""

    def __init__(
        self,
        components: I2VComponents,
        preset: Preset,
        device: str | torch.device = "cpu",
        low_memory: bool = False,
        vae_tiling: bool = True,
    ) -> None:
        """``vae_tiling`` encodes and decodes frames larger than 256 px in overlapping tiles, as the
        official inference does by default, so the decoder's memory does not grow with the frame size."""
        self.components = components
        self.preset = preset
        self.device = torch.device(device)
        if low_memory and self.device.type == "cpu":
            raise InputError("low-memory mode offloads models to the CPU between uses; it needs a GPU device")
        self._encoder = components.diffusers_pipeline()
        if low_memory:
            # Each model moves to the GPU when it runs and back to the CPU when the next one starts.
            self._encoder.enable_model_cpu_offload(device=self.device)
        else:
            for module in components.modules().values():
                module.to(self.device)
        if vae_tiling:
            components.vae.enable_tiling()
        else:
            components.vae.disable_tiling()
        self._video_processor = VideoProcessor(vae_scale_factor=preset.vae.spatial_compression_ratio)

    @classmethod
    def from_preset(
        cls,
        preset: str | Preset,
        device: str | torch.device = "cpu",
        *,
        weights: str | Path | None = None,
        quantize: str | None = None,
        low_memory: bool = False,
        dtype: torch.dtype | None = None,
    ) -> Magic141Pipeline:
        """The pipeline of a preset: the weights in a local folder / JSON file, else the preset's own weights
        folder (the shipped toy weights), else random seeded weights.

        ``quantize`` ("int8" or "int4") quantizes the transformer and text encoders' weights on the fly;
        components saved pre-quantized load as they are.
        """
        preset = get_preset(preset) if isinstance(preset, str) else preset
        weights = preset.weights_folder if weights is None else weights
        if dtype is None:
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        if weights is None:
            components = build_i2v_components(preset)
        else:
            components = load_i2v_components(WeightPaths.resolve(weights), preset.flow_shift, dtype)
        for name in QUANTIZED_COMPONENTS:
            module = getattr(components, name)
            if weights is None:
                module.to(dtype)
            if quantize is not None and not quantization_map(module):
                quantize_weights(module, quantize)
        return cls(components, preset, device, low_memory)

    @cached_property
    def weights_fingerprint(self) -> str:
        """sha256 of every weight; a non-default prompt format, convention or image-frames layout is mixed in: it
        changes every video."""
        digest = fingerprint_modules(self.components.modules())
        declared = [self.components.prompt_format]
        if self.components.convention != CONVENTIONS[0]:
            declared.append(self.components.convention)
        if self.components.image_frames != IMAGE_FRAMES[0]:
            declared.append(self.components.image_frames)
        if declared == [PROMPT_FORMATS[0]]:
            return digest
        return hashlib.sha256(":".join([digest, *declared]).encode()).hexdigest()

    @property
    def vae_scaling_factor(self) -> float:
        return self.components.vae.config.scaling_factor

    # 1. Inputs
    def check_inputs(self, prompt: str, num_frames: int, sampler: SamplerConfig, negative_prompt: str | None) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt is empty; give a text describing the video")
        if num_frames < 1:
            raise InputError(f"num_frames must be >= 1, got {num_frames}")
        if sampler.true_cfg_scale > 1.0 and negative_prompt is None:
            raise InputError("true CFG (true_cfg_scale > 1) needs a negative prompt")
        if self.preset.width % 16 or self.preset.height % 16:
            raise InputError(f"width and height must be multiples of 16, got {self.preset.width}x{self.preset.height}")

    # 2. Prompt: VLM tokens of the reference image in front of the text tokens, plus pooled CLIP
    @torch.no_grad()
    def encode_prompt(
        self, image: PIL.Image.Image, prompt: str, negative_prompt: str | None = None
    ) -> tuple[PromptEmbeddings, PromptEmbeddings | None]:
        """Encode in the components' prompt format (see :mod:`magic141.prompt_encoding`)."""
        text = self.preset.text
        if self.components.prompt_format == "magic141":
            return encode_magic141(
                self.components, image, prompt, negative_prompt, self.device, text.max_sequence_length
            )

        def encode(img: PIL.Image.Image, text_prompt: str) -> PromptEmbeddings:
            embeds, pooled, mask = self._encoder.encode_prompt(
                image=img,
                prompt=text_prompt,
                prompt_template=self.components.prompt_template,
                device=self.device,
                max_sequence_length=text.max_sequence_length,
            )
            return PromptEmbeddings(embeds, mask, pooled)

        positive = encode(image, prompt)
        negative = None
        if negative_prompt is not None:
            negative = encode(PIL.Image.new("RGB", image.size, 0), negative_prompt)
        return positive, negative

    # 3. First-frame latent
    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latent (B, C, 1, h, w), float32: the VAE posterior's mode, or under the
        ``official`` convention a sample of it drawn with ``seed``."""
        vae = self.components.vae
        posterior = vae.encode(pixels.unsqueeze(2).to(self.device, vae.dtype)).latent_dist
        if self.components.convention != "official":
            return posterior.mode().float() * self.vae_scaling_factor
        if seed is None:
            raise InputError("the official convention samples the image latent: give encode_image a seed")
        generator = torch.Generator("cpu").manual_seed(seed)
        return posterior.sample(generator).float() * self.vae_scaling_factor

    def image_pixels(self, image: PIL.Image.Image) -> torch.Tensor:
        """A PIL image, already at the preset's size, as (1, 3, H, W) in [-1, 1]."""
        return self._video_processor.preprocess(image, self.preset.height, self.preset.width)

    # 4. Decode
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (1, C, T, h, w) -> video (1, 3, F, H, W) in [-1, 1], float32."""
        vae = self.components.vae
        return vae.decode(latents.to(vae.dtype) / self.vae_scaling_factor, return_dict=False)[0].float()

    @staticmethod
    def to_uint8(video: torch.Tensor) -> np.ndarray:
        """(1, 3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8."""
        frames = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return frames.permute(1, 2, 3, 0).cpu().numpy()

    def decode_window(self, latents: torch.Tensor, window: Window) -> np.ndarray:
        """A window's latents (1, C, T, h, w) -> the frames it keeps, (keep, H, W, 3) uint8."""
        return self.to_uint8(self.decode(latents.to(self.device)))[window.offset : window.offset + window.keep]

    # 5. Windows
    def plan(self, num_frames: int, mode: str = "chained", overlap: int | None = None) -> list[Window]:
        """The windows of a ``num_frames`` video; ``overlap`` (latents, parallel mode) defaults to the preset's."""
        return plan_video(self.preset, num_frames, mode, overlap)

    def noise(self, seed: int, window: Window) -> torch.Tensor:
        """Noise of one chained window, independent of the other windows'."""
        return window_noise(self.preset, seed, window).to(self.device)

    def timeline_noise(self, seed: int, latent_frames: int) -> torch.Tensor:
        """Noise of a whole co-denoised timeline, (1, C, L, h, w) float32 on the CPU."""
        return timeline_noise(self.preset, seed, latent_frames)

    def at_size(self, size: tuple[int, int]) -> Magic141Pipeline:
        """This pipeline rendering videos of ``size`` (width, height), one of the preset's sizes: same models."""
        preset = self.preset.at_size(size)
        if preset is self.preset:
            return self
        view = copy.copy(self)
        view.preset = preset
        return view

    @property
    def noise_level(self) -> float:
        """How much of the sampler's starting point is noise, as the weights' convention says."""
        return start_noise_level(self.components.convention)

    def first_frame(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """The reference fitted to the video size, as the weights' convention fits it."""
        fit = fit_image_official if self.components.convention == "official" else fit_image
        return fit(image, self.preset.width, self.preset.height)

    def vlm_image(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """The image the VLM reads: the reference as given (``official``) or fitted to the video size."""
        if self.components.convention == "official":
            return image.convert("RGB")
        return self.first_frame(image)

    @torch.no_grad()
    def prepare(
        self, image: PIL.Image.Image, prompt: str, negative_prompt: str | None = None, seed: int = 0
    ) -> Conditioning:
        """Encode what every window of a video seeded ``seed`` is conditioned on: prompt and reference image
        (:meth:`vlm_image`), and the first frame, the reference fitted to the video size."""
        first_frame = self.first_frame(image)
        positive, negative = self.encode_prompt(self.vlm_image(image), prompt, negative_prompt)
        image_latents = self.encode_image(self.image_pixels(first_frame), posterior_seed(seed, 0))
        return Conditioning(positive, negative, image_latents, np.asarray(first_frame))

    @torch.no_grad()
    def render_chained_window(
        self,
        conditioning: Conditioning,
        window: Window,
        seed: int,
        sampler: SamplerConfig,
        first_frame: np.ndarray | None = None,
        on_step: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Sample and decode one chained window starting at ``first_frame`` (H, W, 3) uint8.

        Window 0 starts at the reference image; each later window at the previous window's last
        kept frame, re-encoded through the VAE, so a window can be re-run from the frames written.
        """
        if window.index == 0:
            image_latents = conditioning.image_latents.to(self.device)
        elif first_frame is None:
            raise InputError(f"chained window {window.index} needs the previous window's last frame")
        else:
            pixels = self.image_pixels(PIL.Image.fromarray(first_frame))
            image_latents = self.encode_image(pixels, posterior_seed(seed, window.index))
        latents = sample_window(
            self.components.transformer,
            self.noise(seed, window),
            image_latents,
            conditioning.positive,
            sampler,
            conditioning.negative,
            on_step,
            self.noise_level,
            anchors_first_frame(self.components.convention, sampler),
            image_frames=self.components.image_frames,
        )
        return self.decode_window(latents, window)

    @torch.no_grad()
    def predict_window(
        self,
        conditioning: Conditioning,
        window: Window,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        sampler: SamplerConfig,
    ) -> torch.Tensor:
        """One co-denoising window's velocity (1, C, T, h, w) float32.

        Window 0 carries the image condition. In the paper's layout (``image_frames`` "first") it says where a
        window starts, which is true of window 0 alone; weights trained with the first-frame latent in every
        latent frame ("every") read it as the look of the scene, and every window carries it (on 48 held-out
        toy 10 s videos: colour 77% -> 92%, shape 29% -> 46%, motion kept 41% -> 75%; README).
        """
        carries_image = window.index == 0 or self.components.image_frames == "every"
        velocity = denoise(
            self.components.transformer,
            latents.to(self.device),
            conditioning.image_latents.to(self.device) if carries_image else None,
            timestep.to(self.device),
            conditioning.positive,
            sampler.guidance_scale,
            sampler.true_cfg_scale,
            conditioning.negative,
            image_frames=self.components.image_frames,
        )
        return velocity.float()

    def __call__(
        self,
        image: PIL.Image.Image,
        prompt: str,
        *,
        num_frames: int,
        seed: int,
        sampler: SamplerConfig,
        negative_prompt: str | None = None,
        windows: str = "chained",
        overlap: int | None = None,
        on_progress: ProgressCallback | None = None,
        size: tuple[int, int] | None = None,
    ) -> Iterator[RenderedWindow]:
        """Generate ``num_frames`` frames starting at ``image``, yielding each window once decoded.

        ``windows="chained"``: each window after the first starts from the previous window's last
        frame; the VLM keeps seeing the reference image. ``windows="parallel"``: overlapping windows
        are co-denoised over one latent timeline, then decoded one at a time. The window loop is
        :func:`~magic141.executor.render_windows`, here on a :class:`~magic141.executor.LocalExecutor`.
        ``size`` (width, height) is one of the preset's sizes (default: its own).
        """
        size = (self.preset.width, self.preset.height) if size is None else self.preset.check_size(size)
        self.check_inputs(prompt, num_frames, sampler, negative_prompt)
        plan = self.plan(num_frames, windows, overlap)
        logger.info("sampling %d frames in %d %s window(s) of %d steps", num_frames, len(plan), windows, sampler.steps)
        job = RenderJob(uuid.uuid4().hex, prompt, negative_prompt, np.asarray(image.convert("RGB")), seed, sampler, size)
        yield from render_windows(LocalExecutor(self), job, plan, windows, on_progress)
