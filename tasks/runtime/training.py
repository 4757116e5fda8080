"""The toy world's training stages as the CLI and the ``train_toy_world`` flow build them, with their defaults.

Importing this module is light (no torch): the CLI reads the defaults for its options' help.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magic141.utils import InputError

SHIPPED_STAGES = ("clip", "vae", "prior", "t2v", "i2v", "cfg", "dmd2")  # what `make toy-weights` trains and ships
STAGES = (*SHIPPED_STAGES, "vae-decoder")  # the VAE's decoder refinement trains when asked (not shipped yet)


@dataclass(frozen=True)
class StageDefaults:
    """Each stage's default run: what ``make toy-weights`` trains."""

    max_steps: int
    batch_size: int
    learning_rate: float
    schedule: str
    warmup_steps: int
    # The VAE's convolutions run 1.3x faster under bfloat16 autocast on a CPU with native bfloat16
    # (bench/training_precision.py); "auto" trains so there and in float32 elsewhere (magic141.training.loop).
    precision: str = "float32"


DEFAULTS: dict[str, StageDefaults] = {
    "clip": StageDefaults(2000, 64, 1e-3, "cosine", 100),
    "vae": StageDefaults(5000, 4, 1e-3, "cosine", 0, "auto"),
    "prior": StageDefaults(3000, 16, 1e-3, "cosine", 100),
    "t2v": StageDefaults(1000, 16, 5e-4, "cosine", 100),
    "i2v": StageDefaults(3000, 16, 1e-3, "cosine", 100),
    "cfg": StageDefaults(600, 16, 2e-4, "cosine", 50),
    "dmd2": StageDefaults(600, 16, 2e-5, "constant", 0),
    "vae-decoder": StageDefaults(1200, 4, 2e-4, "cosine", 0),
}
SAMPLES = 12000  # training windows in the transformers' latent cache
PRIOR_AUTOENCODER_STEPS = 800  # the prior's first steps train its autoencoder, the rest its UNet
I2V_PLAIN_STEPS = 1600  # the I2V stage's first steps read plain windows (magic141.training.transformer)
I2V_IMAGE_FRAMES = "every"  # the toy I2V teacher's image-channel layout (magic141.conditioning.IMAGE_FRAMES)


def check_weights_folder(option: str, folder: Path | None) -> None:
    """Refuse a folder that is not a diffusers model folder, naming the option that gave it."""
    if folder is not None and not (Path(folder) / "config.json").is_file():
        raise InputError(f"{option} {folder} is not a weights folder (no config.json); pass the final/ folder of its run")


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
    teacher: Path | None = None,
    distillation: dict[str, Any] | None = None,
    plain_steps: int = I2V_PLAIN_STEPS,
    image_frames: str = I2V_IMAGE_FRAMES,
    refine: Path | None = None,
    student: Path | None = None,
    on_cache: Callable[[int, int], None] | None = None,
) -> Any:
    """The stage ``name`` of ``preset_name``; a transformer stage's latent cache is built first when missing.

    The distillations (``cfg``, ``dmd2``) take their ``teacher`` (default: the preset's own weights folder) and
    their ``distillation`` settings (:class:`magic141.training.distill.CfgSettings` or ``Dmd2Settings`` fields);
    their cache is encoded by the teacher's VAE (or ``vae`` for a bare T2V teacher). The I2V stage's first
    ``plain_steps`` steps read a plain cache, built beside the world's (at most as many windows); it writes the
    first-frame latent in the ``image_frames`` layout (:data:`magic141.conditioning.IMAGE_FRAMES`). The VAE's
    decoder refinement (``vae-decoder``) refines the VAE of ``refine`` on the samples of ``student`` (default:
    the preset's own weights folder) from the latent cache of that VAE."""
    from magic141.presets import get_preset

    if name not in STAGES:
        raise InputError(f"unknown training stage {name!r}; choose one of: {', '.join(STAGES)}")
    preset = get_preset(preset_name)
    if name == "clip":
        from magic141.training.clip import ClipStage

        return ClipStage(preset.width, preset.height)
    if name == "vae":
        from magic141.training.vae import VaeStage

        return VaeStage(preset.vae, preset.width, preset.height, preset.fps)
    if name == "vae-decoder":
        from magic141.training.vae import refinement_stage

        if refine is None:
            raise InputError("the decoder refinement starts from a trained VAE; pass its final/ folder with --refine")
        check_weights_folder("--refine", refine)
        student = student if student is not None else preset.weights_folder
        if student is None:
            raise InputError(f"preset {preset.name!r} ships no student whose samples to decode; pass it with --student")
        return refinement_stage(preset, refine, student, cache_dir, samples, seed, on_cache)
    if name == "prior":
        from magic141.training.prior import PriorStage

        if autoencoder_steps < 1:
            raise InputError(f"--autoencoder-steps must be >= 1, got {autoencoder_steps}")
        return PriorStage(preset, autoencoder_steps)
    from magic141.training.transformer import PLAIN_SAMPLES, TransformerStage, build_cache, cache_path, encoders

    if name in ("cfg", "dmd2"):
        from magic141.training.distill import CfgSettings, DistillStage, Dmd2Settings
        from magic141.training.distill_data import Teacher

        settings = CfgSettings(**(distillation or {})) if name == "cfg" else Dmd2Settings(**(distillation or {}))
        teacher = teacher if teacher is not None else preset.weights_folder
        if teacher is None:
            raise InputError(f"preset {preset.name!r} ships no weights to distil; pass the teacher with --teacher")
        checked = Teacher.check(teacher, preset)
        if "vae" in checked.components:
            vae = checked.components["vae"]
        elif vae is None:
            raise InputError(f"--teacher {teacher} is a bare transformer; pass the VAE its cache is encoded with (--vae)")
    check_weights_folder("--vae", vae)
    check_weights_folder("--t2v", t2v)
    if name == "i2v" and t2v is None:
        raise InputError("the I2V stage starts from the T2V teacher; pass its final/ folder with --t2v")
    if samples < 1:
        raise InputError(f"--samples must be >= 1, got {samples}")
    if plain_steps < 0:
        raise InputError(f"--plain-steps must be >= 0, got {plain_steps}")
    from magic141.conditioning import check_image_frames

    check_image_frames(image_frames)
    components = encoders(preset, vae)
    path, fingerprint = cache_path(cache_dir, components, preset, samples, seed)
    if not path.is_file():
        build_cache(components, preset, samples, seed, path, on_cache)
    if name == "cfg":
        return DistillStage("cfg", preset, checked, path, fingerprint, cfg=settings)
    if name == "dmd2":
        return DistillStage("dmd2", preset, checked, path, fingerprint, dmd2=settings)
    if name == "t2v":
        return TransformerStage(preset, name, path, fingerprint, vae=vae)
    if not plain_steps:
        return TransformerStage(preset, name, path, fingerprint, t2v, vae, image_frames=image_frames)
    plain_samples = max(2, min(PLAIN_SAMPLES, samples))
    plain, plain_fingerprint = cache_path(cache_dir, components, preset, plain_samples, seed, plain=True)
    if not plain.is_file():
        build_cache(components, preset, plain_samples, seed, plain, on_cache, plain=True)
    return TransformerStage(preset, name, path, fingerprint, t2v, vae, plain, plain_fingerprint, plain_steps,
                            image_frames)
