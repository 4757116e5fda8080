"""``magic141 train``: train the toy world's models, each stage by its own command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flows.cli_common import UserError, one_line, print_fields, quiet_model_libraries, stderr, stdout

train_app = typer.Typer(help="Train the toy world's models (see the README's 'Training' section).", no_args_is_help=True)

OutOption = Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, losses.jsonl, loss.png, final/.")]
StepsOption = Annotated[int, typer.Option("--max-steps", help="Optimizer steps to train to (a resumed run goes on to it).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the initial weights and of every sample drawn.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
WorkersOption = Annotated[
    int, typer.Option("--workers", help="Data-parallel workers; more than 1 trains with DDP on a Ray pool (Ray Train).")
]
BatchOption = Annotated[int, typer.Option("--batch-size", help="Global batch of every step, split over the workers.")]
LearningRateOption = Annotated[float, typer.Option("--learning-rate", help="AdamW learning rate.")]
ScheduleOption = Annotated[
    str, typer.Option("--schedule", help="Learning rate: constant, or cosine down to a tenth at --max-steps.")
]
WarmupOption = Annotated[int, typer.Option("--warmup-steps", help="Steps of linear learning-rate warm-up.")]
RayAddressOption = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster to train on (default: $RAY_ADDRESS, else a private local instance)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _command(context: typer.Context) -> list[str]:
    """The running command as a user would type it again: its path, then every option with its value."""
    words = context.command_path.split()
    for parameter in context.command.params:
        value, option = context.params.get(parameter.name), parameter.opts[0]
        if isinstance(value, bool):
            words += [option] if value else []
        elif value is not None:
            words += [option, str(value)]
    return words


def _check_settings(settings: dict[str, Any]) -> Any:
    """The settings, and the output folder as far as it can be checked before the stage exists."""
    from magic141.training.loop import TrainingError, TrainSettings, check_folder

    try:
        checked = TrainSettings(**settings)
        check_folder(checked)
        return checked
    except TrainingError as exc:
        raise UserError(one_line(exc)) from None


def _train(
    context: typer.Context,
    stage_factory: Callable[[], Any],
    settings: dict[str, Any],
    ray_address: str | None,
    as_json: bool,
    dataset_size: int | None = None,
) -> None:
    from magic141.training.loop import TrainingError

    checked = _check_settings(settings)
    quiet_model_libraries(diffusers=False, ray=checked.workers > 1)
    from tasks.train_pool import train

    stage = stage_factory()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr) as progress:
        bar = progress.add_task(f"train {stage.name}", total=checked.max_steps, loss="-")

        def on_step(step: int, total: int, loss: float) -> None:
            progress.update(bar, completed=step, total=total, loss=f"{loss:.4g}")

        try:
            result = train(stage, checked, address=ray_address, on_step=on_step, dataset_size=dataset_size,
                           command=_command(context))
        except TrainingError as exc:
            raise UserError(one_line(exc)) from None
    summary = {"stage": stage.name, "steps": result.steps, "first_loss": result.first_loss,
               "last_loss": result.last_loss, "final": str(result.final), "curve": str(result.out / "loss.png")}
    if as_json:
        stdout.print_json(json.dumps(summary))
    else:
        print_fields(summary.items(), 10)


@train_app.command("clip")
def train_clip(
    context: typer.Context,
    out: OutOption = Path("out/train/clip"),
    max_steps: StepsOption = 1500,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = 64,
    learning_rate: LearningRateOption = 1e-3,
    schedule: ScheduleOption = "constant",
    warmup_steps: WarmupOption = 0,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The retrieval index's CLIP model, contrastive on toy-world frames and their descriptions.

    Its final/ folder is an open_clip model: 'magic141 index build CORPUS --model DIR' embeds with it.
    """
    from magic141.training.clip import ClipStage

    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": schedule,
                "warmup_steps": warmup_steps}
    _train(context, ClipStage, settings, ray_address, as_json)


PresetOption = Annotated[str, typer.Option("--preset", help="Preset whose architecture and video geometry are trained.")]


def _preset(name: str) -> Any:
    from magic141.presets import get_preset

    try:
        return get_preset(name)
    except ValueError as exc:
        raise UserError(one_line(exc)) from None


@train_app.command("vae")
def train_vae(
    context: typer.Context,
    preset: PresetOption = "toy",
    out: OutOption = Path("out/train/vae"),
    max_steps: StepsOption = 2000,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = 4,
    learning_rate: LearningRateOption = 1e-3,
    schedule: ScheduleOption = "cosine",
    warmup_steps: WarmupOption = 0,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The video VAE (HunyuanVideo's causal 3D VAE at the preset's size) on toy-world clips and single frames.

    Its final/ folder is a diffusers AutoencoderKLHunyuanVideo, with the scaling factor measured on its latents.
    """
    from magic141.training.vae import VaeStage

    config = _preset(preset)
    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": schedule,
                "warmup_steps": warmup_steps}
    _train(context, lambda: VaeStage(config.vae, config.width, config.height, config.fps), settings, ray_address, as_json)


def _transformer_stage(preset_name: str, mode: str, vae: Path | None, init: Path | None, samples: int,
                       cache_dir: Path, seed: int) -> Any:
    """The stage over its latent cache, built first (with a bar) when this dataset has none yet."""
    from magic141.training.transformer import TransformerStage, build_cache, cache_path, encoders

    preset = _preset(preset_name)
    for name, folder, marker in (("--vae", vae, "config.json"), ("--t2v", init, "config.json")):
        if folder is not None and not (folder / marker).is_file():
            raise UserError(f"{name} {folder} is not a weights folder (no {marker}); pass the final/ folder of its run")
    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    components = encoders(preset, vae)
    path, fingerprint = cache_path(cache_dir, components, samples, seed)
    if not path.is_file():
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=stderr) as progress:
            bar = progress.add_task("encode windows", total=samples)
            build_cache(components, preset, samples, seed, path, lambda done, total: progress.update(bar, completed=done))
    return TransformerStage(preset, mode, path, fingerprint, init)


VaeOption = Annotated[Path | None, typer.Option("--vae", help="Trained VAE folder (final/ of 'train vae').")]
SamplesOption = Annotated[int, typer.Option("--samples", help="Training windows encoded into the latent cache.")]
CacheOption = Annotated[Path, typer.Option("--cache-dir", help="Where latent caches are kept, one per VAE and dataset.")]


@train_app.command("t2v")
def train_t2v(
    context: typer.Context,
    preset: PresetOption = "toy",
    vae: VaeOption = None,
    samples: SamplesOption = 2000,
    cache_dir: CacheOption = Path("out/train/cache"),
    out: OutOption = Path("out/train/t2v"),
    max_steps: StepsOption = 3000,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = 16,
    learning_rate: LearningRateOption = 5e-4,
    schedule: ScheduleOption = "cosine",
    warmup_steps: WarmupOption = 100,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The text-to-video teacher: flow matching on the VAE latents of toy-world windows and their captions."""
    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": schedule,
                "warmup_steps": warmup_steps}
    _check_settings(settings)
    stage = _transformer_stage(preset, "t2v", vae, None, samples, cache_dir, seed)
    _train(context, lambda: stage, settings, ray_address, as_json, dataset_size=samples)


@train_app.command("i2v")
def train_i2v(
    context: typer.Context,
    t2v: Annotated[Path, typer.Option("--t2v", help="The T2V teacher's folder (final/ of 'train t2v').")],
    preset: PresetOption = "toy",
    vae: VaeOption = None,
    samples: SamplesOption = 2000,
    cache_dir: CacheOption = Path("out/train/cache"),
    out: OutOption = Path("out/train/i2v"),
    max_steps: StepsOption = 3000,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = 16,
    learning_rate: LearningRateOption = 5e-4,
    schedule: ScheduleOption = "cosine",
    warmup_steps: WarmupOption = 100,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The image-to-video teacher: the T2V teacher widened to 2C+1 inputs (copy and zero init), trained with the
    first-frame latent and the VLM's image tokens in front of the text tokens."""
    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": schedule,
                "warmup_steps": warmup_steps}
    _check_settings(settings)
    stage = _transformer_stage(preset, "i2v", vae, t2v, samples, cache_dir, seed)
    _train(context, lambda: stage, settings, ray_address, as_json, dataset_size=samples)
