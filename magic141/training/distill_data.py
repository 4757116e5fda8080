"""What the distillations train on: the teacher folder, and batches drawn from the teachers' latent cache.

A batch holds training windows, the caption's and the empty prompt's conditions (behind the same VLM image
tokens and first-frame latent), a guidance scale per sample, and the noise levels and noises a step uses, all
drawn from ``sample_rng`` so that a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from magic141.conditioning import IMAGE_FRAMES, image_condition
from magic141.presets import Preset
from magic141.training.loop import TrainingError, sample_rng
from magic141.training.transformer import IMAGE_DROPOUT, _load_cache

DMD_SIGMA_RANGE = (0.02, 0.98)  # the noise levels, before the flow shift, at which the real and fake models judge


def shifted(u: float, flow_shift: float) -> float:
    return flow_shift * u / (1 + (flow_shift - 1) * u)


def folder_fingerprint(folder: Path) -> str:
    """sha256 over a model folder's config and safetensors files (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("*.json"), *folder.glob("*.safetensors")]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Teacher:
    """A teacher whose transformer fits the preset: a weights folder or a JSON file naming its components (the I2V
    teacher, or a CFG-distilled one), or a bare transformer folder (the T2V teacher, final/ of 'train t2v')."""

    source: Path
    transformer_folder: Path
    fingerprint: str
    image_to_video: bool
    image_frames: str = IMAGE_FRAMES[0]  # the layout of its image channels, as its folder declares

    @property
    def components(self) -> dict[str, Path]:
        """The folders of the teacher's other components (VAE, encoders, prior); none for a bare transformer."""
        if self.transformer_folder == self.source:
            return {}
        from magic141.weights import WeightPaths

        paths = WeightPaths.resolve(self.source)
        return {f.name: Path(getattr(paths, f.name)) for f in dataclasses.fields(paths)
                if f.name != "transformer" and getattr(paths, f.name) is not None}

    @classmethod
    def check(cls, source: Path, preset: Preset, option: str = "--teacher") -> Teacher:
        """Refuse a source that holds no transformer, or one of another geometry than ``preset`` (the message
        names the ``option`` that gave it)."""
        source = Path(source)
        if (source / "config.json").is_file():
            transformer = source
        else:
            from magic141.weights import WeightPaths

            try:
                transformer = Path(WeightPaths.resolve(source).transformer)
            except ValueError:
                transformer = source / "transformer"
        if not (transformer / "config.json").is_file():
            raise TrainingError(f"{option} {source} holds no transformer (no transformer/config.json); pass a weights "
                                "folder, or the final/ folder of 'magic141 train i2v', 'train cfg' or 'train dmd2'")
        config = json.loads((transformer / "config.json").read_text())
        latent = preset.transformer.latent_channels
        expected = {**asdict(preset.transformer), "out_channels": latent}
        wrong = [f"{key} {config.get(key)!r} there, {value!r} in the preset"
                 for key, value in expected.items()
                 if key in config and (list(value) if isinstance(value, tuple) else value) != config[key]]
        if config.get("in_channels") not in (latent, 2 * latent + 1):
            wrong.append(f"in_channels {config.get('in_channels')} is neither {latent} nor {2 * latent + 1}")
        if not config.get("guidance_embeds", False):
            wrong.append("it has no guidance embedding, which the student's guidance input needs")
        if wrong:
            raise TrainingError(f"{option} {source} is of another geometry than preset {preset.name!r} "
                                f"({'; '.join(wrong[:3])}); pass one of that preset or choose its --preset")
        from magic141.weights import read_image_frames

        return cls(source, transformer, folder_fingerprint(transformer), config["in_channels"] != latent,
                   read_image_frames(transformer))

    def transformer(self) -> torch.nn.Module:
        from diffusers import HunyuanVideoTransformer3DModel

        return HunyuanVideoTransformer3DModel.from_pretrained(str(self.transformer_folder), torch_dtype=torch.float32)


@dataclass(frozen=True)
class Condition:
    """What the transformer sees beside the noisy latent: the first-frame channels (None for a T2V model) and
    the text tokens (the VLM image tokens first, for an I2V model)."""

    image: torch.Tensor | None  # (B, C, T, h, w)
    mask: torch.Tensor | None  # (B, 1, T, h, w)
    text: torch.Tensor  # (B, L, D)
    text_mask: torch.Tensor  # (B, L)
    pooled: torch.Tensor  # (B, D_pooled)


@dataclass(frozen=True)
class DistillBatch:
    latents: torch.Tensor  # (B, C, T, h, w) training windows x_0
    cond: Condition  # the caption
    uncond: Condition  # the empty prompt, same image
    guidance: torch.Tensor  # (B,) guidance scale s = 1 + w
    sigmas: torch.Tensor  # (B, K) the step's noise levels, one per use
    noises: torch.Tensor  # (B, K, C, T, h, w) the noises that go with them
    generator_step: bool = False


def conditions(cache: dict[str, torch.Tensor], index: int, caption: int, image_to_video: bool, drop_image: bool,
               frames: int, image_frames: str = IMAGE_FRAMES[0]) -> tuple[Condition, Condition]:
    def text(caption_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = cache[f"text.{caption_id}"], cache[f"text_mask.{caption_id}"]
        if not image_to_video:
            return states, mask
        tokens = cache["image_tokens"][index]
        return torch.cat([tokens, states]), torch.cat([torch.ones(tokens.shape[0]), mask])

    image = mask = None
    if image_to_video:
        image, mask = image_condition(cache["first_latents"][index][None], frames, image_frames)
        image, mask = image[0], mask[0]
        if drop_image:
            image, mask = torch.zeros_like(image), torch.zeros_like(mask)
    cond_text, uncond_text = text(caption), text(0)
    return (Condition(image, mask, *cond_text, cache[f"pooled.{caption}"]),
            Condition(image, mask, *uncond_text, cache["pooled.0"]))


def stack_conditions(conditions: Sequence[Condition]) -> Condition:
    def stacked(name: str) -> torch.Tensor | None:
        values = [getattr(c, name) for c in conditions]
        return None if values[0] is None else torch.stack(values)

    return Condition(stacked("image"), stacked("mask"), stacked("text"), stacked("text_mask"), stacked("pooled"))


def uniform(rng: torch.Generator) -> float:
    return float(torch.rand(1, generator=rng))


def training_level(shift: float, rng: torch.Generator) -> float:
    """A noise level as the teachers were trained at: uniform, then shifted."""
    return shifted(uniform(rng), shift)


def uniform_level(rng: torch.Generator) -> float:
    """A noise level, unshifted, in :data:`DMD_SIGMA_RANGE`: as many levels that keep an outline as hide it."""
    low, high = DMD_SIGMA_RANGE
    return low + (high - low) * uniform(rng)


def judge_level(shift: float, rng: torch.Generator) -> float:
    """A noise level at which the real and fake models judge a generator sample."""
    return shifted(uniform_level(rng), shift)


def step_level(schedule: torch.Tensor, rng: torch.Generator) -> float:
    """One of the generator's own sampling steps."""
    return float(schedule[int(torch.randint(len(schedule), (1,), generator=rng))])


def distill_batch(cache_path: Path, samples: Sequence[int], seed: int, step: int, *, image_to_video: bool,
                  w_range: tuple[float, float], sigma_draws: Sequence[Callable[[torch.Generator], float]],
                  generator_step: bool = False, image_frames: str = IMAGE_FRAMES[0]) -> DistillBatch:
    """The batch of ``samples`` at ``step``: each sample's image dropout, guidance scale, and one noise level and
    noise per entry of ``sigma_draws`` (a callable of the sample's generator), all from ``sample_rng``; an I2V
    model's image channels in its ``image_frames`` layout."""
    cache = _load_cache(str(cache_path))
    rows = []
    for index in samples:
        rng = sample_rng(seed, step, index)
        x0 = cache["latents"][index]
        drop_image = uniform(rng) < IMAGE_DROPOUT
        guidance = 1 + w_range[0] + (w_range[1] - w_range[0]) * uniform(rng)
        sigmas = [float(draw(rng)) for draw in sigma_draws]
        noises = torch.stack([torch.randn(x0.shape, generator=rng) for _ in sigma_draws])
        cond, uncond = conditions(cache, index, int(cache["captions"][index]), image_to_video, drop_image, x0.shape[1],
                                  image_frames)
        rows.append((x0, cond, uncond, guidance, sigmas, noises))
    x0, cond, uncond, guidance, sigmas, noises = zip(*rows)
    return DistillBatch(torch.stack(x0), stack_conditions(cond), stack_conditions(uncond), torch.tensor(guidance), torch.tensor(sigmas),
                        torch.stack(noises), generator_step)
