"""The toy world's training stages as the CLI and the ``train_toy_world`` flow build them, with their defaults.

Importing this module is light (no torch): the CLI reads the defaults for its options' help.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("clip", "vae", "prior", "t2v", "i2v")


@dataclass(frozen=True)
class StageDefaults:
    """Each stage's default run: what ``make toy-weights`` trains."""

    max_steps: int
    batch_size: int
    learning_rate: float
    schedule: str
    warmup_steps: int


DEFAULTS: dict[str, StageDefaults] = {
    "clip": StageDefaults(3000, 64, 1e-3, "constant", 0),
    "vae": StageDefaults(3000, 4, 1e-3, "cosine", 0),
    "prior": StageDefaults(3000, 16, 1e-3, "cosine", 100),
    "t2v": StageDefaults(1000, 16, 5e-4, "cosine", 100),
    "i2v": StageDefaults(3000, 16, 5e-4, "cosine", 100),
}
SAMPLES = 12000  # training windows in the transformers' latent cache
PRIOR_AUTOENCODER_STEPS = 800  # the prior's first steps train its autoencoder, the rest its UNet


def check_weights_folder(option: str, folder: Path | None) -> None:
    """Refuse a folder that is not a diffusers model folder, naming the option that gave it."""
    if folder is not None and not (Path(folder) / "config.json").is_file():
        raise ValueError(f"{option} {folder} is not a weights folder (no config.json); pass the final/ folder of its run")


def make_stage(
    name: str,
    preset_name: str = "toy",
    *,
    vae: Path | None = None,
    t2v: Path | None = None,
    samples: int = SAMPLES,
    cache_dir: Path = Path("out/train/cache"),
    seed: int = 0,
    autoencoder_steps: int = PRIOR_AUTOENCODER_STEPS,
    on_cache: Callable[[int, int], None] | None = None,
) -> Any:
    """The stage ``name`` of ``preset_name``; a transformer stage's latent cache is built first when missing."""
    from magic141.presets import get_preset

    if name not in STAGES:
        raise ValueError(f"unknown training stage {name!r}; choose one of: {', '.join(STAGES)}")
    preset = get_preset(preset_name)
    if name == "clip":
        from magic141.training.clip import ClipStage

        return ClipStage(preset.width, preset.height)
    if name == "vae":
        from magic141.training.vae import VaeStage

        return VaeStage(preset.vae, preset.width, preset.height, preset.fps)
    if name == "prior":
        from magic141.training.prior import PriorStage

        if autoencoder_steps < 1:
            raise ValueError(f"--autoencoder-steps must be >= 1, got {autoencoder_steps}")
        return PriorStage(preset, autoencoder_steps)
    from magic141.training.transformer import TransformerStage, build_cache, cache_path, encoders

    check_weights_folder("--vae", vae)
    check_weights_folder("--t2v", t2v)
    if name == "i2v" and t2v is None:
        raise ValueError("the I2V stage starts from the T2V teacher; pass its final/ folder with --t2v")
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    components = encoders(preset, vae)
    path, fingerprint = cache_path(cache_dir, components, samples, seed)
    if not path.is_file():
        build_cache(components, preset, samples, seed, path, on_cache)
    return TransformerStage(preset, name, path, fingerprint, t2v if name == "i2v" else None, vae)
