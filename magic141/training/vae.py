"""The video VAE (diffusers' HunyuanVideo causal 3D VAE, small) trained to reconstruct toy-world clips.

Steps cycle through clip lengths of 4k+1 frames, single images included: the I2V pipeline encodes its
first frame as a one-frame video, and that latent must decode to the same picture. The longest is a whole
toy window (17 frames, 5 latent frames): the causal encoder's later latent frames see more frames before them
than a shorter clip has, and a VAE that never trained on them drew coloured ghosts behind moving objects there.

The loss is L1 plus MSE on pixels, averaged over the object's pixels and over the background's pixels
separately and summed: an object covers a few percent of a frame, and a loss averaged over all pixels is
met by a blur of the background's colour (a run trained so decoded red as brown). The decoder reads the
posterior's mean, which is what the pipelines encode (its variance is not trained, so sampling the posterior
is not meaningful for this VAE), and a small penalty on the mean, the KL term's, keeps the latents near unit
scale. The saved folder's ``scaling_factor`` is measured on training clips (one over the latents' standard
deviation), as Stable Diffusion's and HunyuanVideo's are, so the transformer sees latents of unit variance.

The decoder refinement (:class:`DecoderStage`) trains a trained VAE's decoder alone, its encoder frozen: the
latents, the transformers' latent caches and every transformer trained on them stay valid. It trains on what
the decoder reads in use, the few-step student's samples, which are never exactly an encoder's latents (a
decoder trained on those alone draws stray blobs and halos around the student's): a training window of the
latent cache is noised to one of the student's last ``ENTRY_STEPS`` noise levels, the student samples it
from there to the end as the sampler does (the first latent frame anchored to the image's), and the decoded
video is matched with the window's rendered frames. Entering that late, the sample keeps the window's scene,
so its frames are the target. Its loss adds two terms the averages above let slip: the error of the ring of
background pixels just outside the object (a halo there rounds a square's corners into a circle for any
reader) and the mean of the worst ``TAIL_SHARE`` of background pixels' errors (a stray blob of a few pixels
is noise in a frame's average).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from magic141.components import build_vae
from magic141.presets import Preset, VAEConfig
from magic141.sampler import anchored
from magic141.toy_world import render_video, sample_scene, split_captions
from magic141.training.loop import sample_rng

LATENT_PENALTY = 1e-3  # weight of the mean squared latent (the KL divergence's mean term)
OBJECT_DISTANCE = 0.1  # a pixel whose channels differ this much from its frame's corner pixel is the object's
CLIP_FRAMES = (1, 9, 1, 17)  # the clip length of step n is CLIP_FRAMES[n % 4]; 17: a toy window
SCALE_SAMPLES = 32
SCALE_SEED = 2**31 - 1  # clips of no training run's seed measure the scaling factor
RING_PIXELS = 2  # the refinement's ring: background pixels within this many pixels of the object
TAIL_SHARE = 0.01  # the refinement's tail: this share of background pixels, the worst decoded
RING_WEIGHT = 0.25  # the weights of the ring's and the tail's errors beside the object's and the background's
TAIL_WEIGHT = 0.25
ENTRY_STEPS = 2  # a refinement sample enters the student's sampling at one of its last this many steps


@dataclass(frozen=True)
class VideoBatch:
    pixels: torch.Tensor  # (B, 3, F, H, W) in [-1, 1]
    latents: torch.Tensor | None = None  # (B, C, T, h, w) unscaled: what the decoder reads; None: the encoder's


def _object_mask(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) 1.0 where a pixel of (B, 3, ...) in [-1, 1] is the object's: the background is plain, so those
    whose channels differ from their frame's corner pixel by more than ``OBJECT_DISTANCE`` (objects never touch
    the border)."""
    return ((pixels - pixels[..., :1, :1]).abs().amax(1, keepdim=True) > OBJECT_DISTANCE).float()


def _masked_mean(error: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.expand_as(error)
    return (error * mask).sum() / mask.sum().clamp_min(1)


def _pixel_error(decoded: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    return (decoded - pixels).abs() + (decoded - pixels) ** 2


def reconstruction_errors(decoded: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 plus squared error, averaged over the object's pixels and over the background's, of images (B, 3, H, W)
    or videos (B, 3, F, H, W) in [-1, 1]."""
    error, obj = _pixel_error(decoded, pixels), _object_mask(pixels)
    return _masked_mean(error, obj), _masked_mean(error, 1 - obj)


def refinement_errors(decoded: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder refinement's two terms for videos (B, 3, F, H, W): the error averaged over the background
    pixels within ``RING_PIXELS`` of the object, and the mean error of the worst ``TAIL_SHARE`` of background
    pixels (each pixel's error summed over its channels)."""
    error, obj = _pixel_error(decoded, pixels), _object_mask(pixels)
    size = 2 * RING_PIXELS + 1
    near = F.max_pool3d(obj, (1, size, size), stride=1, padding=(0, RING_PIXELS, RING_PIXELS))
    ring = _masked_mean(error, near - obj)
    background = error.sum(1)[(1 - near)[:, 0] > 0]
    tail = background.topk(max(1, int(TAIL_SHARE * background.numel()))).values.mean()
    return ring, tail


class VaeTrainee(torch.nn.Module):
    """The VAE, whole; or with ``decoder_only``, its decoder under the refinement's loss (the encoder frozen)."""

    def __init__(self, vae: torch.nn.Module, decoder_only: bool = False) -> None:
        super().__init__()
        self.vae = vae
        self.decoder_only = decoder_only
        if decoder_only:
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)

    def forward(self, batch: VideoBatch) -> tuple[torch.Tensor, dict[str, float]]:
        pixels, latents = batch.pixels, batch.latents
        if latents is None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.decoder_only):
                latents = self.vae.encode(pixels).latent_dist.mean  # (B, C, T, h, w)
        decoded = self.vae.decode(latents).sample.float()  # (B, 3, F, H, W); bfloat16 under autocast
        latents = latents.float()
        object_error, background_error = reconstruction_errors(decoded, pixels)
        mse = F.mse_loss(decoded.detach(), pixels)
        logged = {"object": object_error.item(), "background": background_error.item(),
                  "psnr": (10 * torch.log10(4.0 / mse.clamp_min(1e-10))).item()}  # the [-1, 1] range spans 2
        if self.decoder_only:
            ring, tail = refinement_errors(decoded, pixels)
            logged |= {"ring": ring.item(), "tail": tail.item()}
            return object_error + background_error + RING_WEIGHT * ring + TAIL_WEIGHT * tail, logged
        return object_error + background_error + LATENT_PENALTY * latents.pow(2).mean(), logged


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

    @property
    def name(self) -> str:
        return "vae"

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


@lru_cache(maxsize=1)
def _student(folder: str) -> torch.nn.Module:
    from diffusers import HunyuanVideoTransformer3DModel

    return HunyuanVideoTransformer3DModel.from_pretrained(folder, torch_dtype=torch.float32).eval().requires_grad_(False)


@dataclass(frozen=True)
class DecoderStage:
    """The decoder refinement of the trained VAE in ``refine`` (``refine_fingerprint`` its weights') on the
    samples of ``student`` (an I2V transformer trained on that VAE's latents) from the latent cache ``cache``,
    built with seed ``cache_seed``."""

    preset: Preset
    refine: Path
    refine_fingerprint: str
    student: Path
    student_fingerprint: str
    cache: Path
    cache_fingerprint: str
    cache_seed: int
    scaling_factor: float  # the VAE's, which the cache's latents are scaled by
    student_image_frames: str  # the layout of the student's image channels, as its folder declares

    @property
    def name(self) -> str:
        return "vae-decoder"

    def describe(self) -> dict[str, Any]:
        return {"vae": asdict(self.preset.vae), "frame": [self.preset.width, self.preset.height], "fps": self.preset.fps,
                "refine": self.refine_fingerprint, "student": self.student_fingerprint, "cache": self.cache_fingerprint,
                "sampling": {"steps": self.preset.steps, "flow_shift": self.preset.flow_shift,
                             "guidance": self.preset.guidance_scale, "entry_steps": ENTRY_STEPS},
                "ring_pixels": RING_PIXELS, "tail_share": TAIL_SHARE, "ring_weight": RING_WEIGHT, "tail_weight": TAIL_WEIGHT}

    def build(self, seed: int) -> torch.nn.Module:
        from diffusers import AutoencoderKLHunyuanVideo

        torch.manual_seed(seed)
        return VaeTrainee(AutoencoderKLHunyuanVideo.from_pretrained(str(self.refine)), decoder_only=True)

    def schedule(self) -> torch.Tensor:
        """The student's noise levels as the sampler steps through them (the preset's steps and flow shift)."""
        from magic141.training.distill import Dmd2Settings

        return Dmd2Settings(steps=self.preset.steps).schedule(self.preset.flow_shift)

    @torch.no_grad()
    def student_latents(self, seed: int, step: int, samples: Sequence[int]) -> torch.Tensor:
        """The student's samples (B, C, T, h, w), scaled as the cache's latents, of the windows ``samples`` noised
        to one of its last ``ENTRY_STEPS`` levels (with the image dropout, guidance and noise ``distill_batch``
        draws from ``sample_rng``); where the window's image is given, its first latent frame is the image's."""
        from magic141.training.distill import noised, velocity
        from magic141.training.distill_data import distill_batch, step_level

        schedule = self.schedule()
        w = self.preset.guidance_scale - 1
        batch = distill_batch(self.cache, samples, seed, step, image_to_video=True, w_range=(w, w),
                              sigma_draws=[partial(step_level, schedule[-ENTRY_STEPS:])],
                              image_frames=self.student_image_frames)
        sigma, condition = batch.sigmas[:, 0], batch.cond
        latents = noised(batch.latents, batch.noises[:, 0], sigma)
        student = _student(str(self.student))
        levels = [*schedule.tolist(), 0.0]
        for current, following in zip(levels[:-1], levels[1:]):
            entered = (sigma > current - 1e-6).view(-1, 1, 1, 1, 1)
            if bool(entered.any()):
                move = (following - current) * velocity(student, latents, torch.full_like(sigma, current), condition,
                                                        batch.guidance)
                latents = torch.where(entered, latents + move, latents)
        given = (condition.mask.flatten(1).amax(1) > 0).view(-1, 1, 1, 1, 1)
        return torch.where(given, anchored(latents, condition.image[:, :, :1]), latents)

    def batch(self, seed: int, step: int, samples: Sequence[int]) -> VideoBatch:
        from magic141.training.transformer import cache_window

        captions = split_captions("train")
        frames = [cache_window(self.preset, captions, self.cache_seed, index)[1] for index in samples]
        return VideoBatch(_frames_tensor(frames), self.student_latents(seed, step, samples) / self.scaling_factor)

    def save(self, trainee: torch.nn.Module, folder: Path) -> None:
        """The refined VAE; its scaling factor is its encoder's, kept."""
        trainee.vae.eval().save_pretrained(folder, safe_serialization=True)


def refinement_stage(preset: Preset, folder: Path, student: Path, cache_dir: Path, samples: int, seed: int,
                     on_cache: Callable[[int, int], None] | None = None) -> DecoderStage:
    """The decoder refinement of the trained VAE in ``folder`` on the samples of ``student`` (a weights folder
    or transformer folder of ``preset``), its latent cache of ``samples`` windows built first when missing.
    Refused before any compute: a VAE of another geometry than the preset's, a student of another geometry or
    none of image-to-video, or one whose weights folder holds a VAE of another encoder."""
    from diffusers import AutoencoderKLHunyuanVideo

    from magic141.components import fingerprint_modules, vae_encoder_fingerprint
    from magic141.training.distill_data import Teacher
    from magic141.training.transformer import build_cache, cache_path, encoders
    from magic141.utils import InputError

    vae = AutoencoderKLHunyuanVideo.from_pretrained(str(folder))
    built = build_vae(preset.vae).config
    differing = [key for key in ("block_out_channels", "layers_per_block", "latent_channels",
                                 "spatial_compression_ratio", "temporal_compression_ratio")
                 if tuple(np.atleast_1d(vae.config[key])) != tuple(np.atleast_1d(built[key]))]
    if differing:
        raise InputError(f"--refine {folder} is a VAE of another geometry ({', '.join(differing)} differ from the "
                         "preset's); pass a VAE trained for this preset")
    checked = Teacher.check(student, preset, option="--student")
    if not checked.image_to_video:
        raise InputError(f"--student {student} is a text-to-video transformer; pass the image-to-video student the "
                         "decoder serves (final/ of 'magic141 train dmd2')")
    own = checked.components.get("vae")
    if own is not None and vae_encoder_fingerprint(AutoencoderKLHunyuanVideo.from_pretrained(str(own))) != \
            vae_encoder_fingerprint(vae):
        raise InputError(f"--student {student} samples the latents of another VAE encoder than --refine {folder}'s; "
                         "refine the VAE its transformer was trained with")
    if samples < 1:
        raise InputError(f"--samples must be >= 1, got {samples}")
    components = encoders(preset, Path(folder))
    path, fingerprint = cache_path(cache_dir, components, preset, samples, seed)
    if not path.is_file():
        build_cache(components, preset, samples, seed, path, on_cache)
    return DecoderStage(preset, Path(folder), fingerprint_modules({"vae": vae}), checked.transformer_folder,
                        checked.fingerprint, path, fingerprint, seed, float(vae.config.scaling_factor),
                        checked.image_frames)
