"""``magic141 train``: train the toy world's models, each stage by its own command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flows.cli_common import UserError, one_line, print_fields, quiet_model_libraries, stderr, stdout
from tasks.training import DEFAULTS, PRIOR_AUTOENCODER_STEPS, SAMPLES

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
    max_steps: StepsOption = DEFAULTS["clip"].max_steps,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = DEFAULTS["clip"].batch_size,
    learning_rate: LearningRateOption = DEFAULTS["clip"].learning_rate,
    schedule: ScheduleOption = DEFAULTS["clip"].schedule,
    warmup_steps: WarmupOption = DEFAULTS["clip"].warmup_steps,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The retrieval index's CLIP model, contrastive on toy-world frames and their descriptions.

    Its final/ folder is an open_clip model: 'magic141 index build CORPUS --model DIR' embeds with it.
    """
    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": schedule,
                "warmup_steps": warmup_steps}
    _check_settings(settings)
    stage = _stage("clip", "toy")
    _train(context, lambda: stage, settings, ray_address, as_json)


PresetOption = Annotated[str, typer.Option("--preset", help="Preset whose architecture and video geometry are trained.")]


@train_app.command("vae")
def train_vae(
    context: typer.Context,
    preset: PresetOption = "toy",
    out: OutOption = Path("out/train/vae"),
    max_steps: StepsOption = DEFAULTS["vae"].max_steps,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = DEFAULTS["vae"].batch_size,
    learning_rate: LearningRateOption = DEFAULTS["vae"].learning_rate,
    schedule: ScheduleOption = DEFAULTS["vae"].schedule,
    warmup_steps: WarmupOption = DEFAULTS["vae"].warmup_steps,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The video VAE (HunyuanVideo's causal 3D VAE at the preset's size) on toy-world clips and single frames.

    Its final/ folder is a diffusers AutoencoderKLHunyuanVideo, with the scaling factor measured on its latents.
    """
    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": schedule,
                "warmup_steps": warmup_steps}
    _check_settings(settings)
    stage = _stage("vae", preset)
    _train(context, lambda: stage, settings, ray_address, as_json)


@train_app.command("prior")
def train_prior(
    context: typer.Context,
    preset: PresetOption = "toy",
    autoencoder_steps: Annotated[
        int, typer.Option("--autoencoder-steps", help="First steps, which train the autoencoder; the UNet trains after.")
    ] = PRIOR_AUTOENCODER_STEPS,
    out: OutOption = Path("out/train/prior"),
    max_steps: StepsOption = DEFAULTS["prior"].max_steps,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = DEFAULTS["prior"].batch_size,
    learning_rate: LearningRateOption = DEFAULTS["prior"].learning_rate,
    schedule: ScheduleOption = DEFAULTS["prior"].schedule,
    warmup_steps: WarmupOption = DEFAULTS["prior"].warmup_steps,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The text-to-image prior (the preset's SDXL-family pipeline) on toy-world first frames: its autoencoder
    first, then its UNet, with the text encoders frozen.

    Its final/ folder is a diffusers pipeline: put it in a weights folder as prior/.
    """
    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": schedule,
                "warmup_steps": warmup_steps}
    _check_settings(settings)
    if max_steps <= autoencoder_steps:
        raise UserError(f"--max-steps {max_steps} leaves no step for the UNet after {autoencoder_steps} autoencoder "
                        "steps; raise --max-steps or lower --autoencoder-steps")
    stage = _stage("prior", preset, autoencoder_steps=autoencoder_steps)
    _train(context, lambda: stage, settings, ray_address, as_json)


def _stage(name: str, preset: str, **options: Any) -> Any:
    """The stage, its transformer latent cache encoded first (with a bar) when this dataset has none yet."""
    from tasks.training import make_stage

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        bar = progress.add_task("encode windows", total=None, visible=False)

        def on_cache(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total, visible=True)

        try:
            return make_stage(name, preset, on_cache=on_cache, **options)
        except ValueError as exc:
            raise UserError(one_line(exc)) from None


VaeOption = Annotated[Path | None, typer.Option("--vae", help="Trained VAE folder (final/ of 'train vae').")]
SamplesOption = Annotated[int, typer.Option("--samples", help="Training windows encoded into the latent cache.")]
CacheOption = Annotated[Path, typer.Option("--cache-dir", help="Where latent caches are kept, one per VAE and dataset.")]


@train_app.command("t2v")
def train_t2v(
    context: typer.Context,
    preset: PresetOption = "toy",
    vae: VaeOption = None,
    samples: SamplesOption = SAMPLES,
    cache_dir: CacheOption = Path("out/train/cache"),
    out: OutOption = Path("out/train/t2v"),
    max_steps: StepsOption = DEFAULTS["t2v"].max_steps,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = DEFAULTS["t2v"].batch_size,
    learning_rate: LearningRateOption = DEFAULTS["t2v"].learning_rate,
    schedule: ScheduleOption = DEFAULTS["t2v"].schedule,
    warmup_steps: WarmupOption = DEFAULTS["t2v"].warmup_steps,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The text-to-video teacher: flow matching on the VAE latents of toy-world windows and their captions."""
    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": schedule,
                "warmup_steps": warmup_steps}
    _check_settings(settings)
    stage = _stage("t2v", preset, vae=vae, samples=samples, cache_dir=cache_dir, seed=seed)
    _train(context, lambda: stage, settings, ray_address, as_json, dataset_size=samples)


@train_app.command("i2v")
def train_i2v(
    context: typer.Context,
    t2v: Annotated[Path, typer.Option("--t2v", help="The T2V teacher's folder (final/ of 'train t2v').")],
    preset: PresetOption = "toy",
    vae: VaeOption = None,
    samples: SamplesOption = SAMPLES,
    cache_dir: CacheOption = Path("out/train/cache"),
    out: OutOption = Path("out/train/i2v"),
    max_steps: StepsOption = DEFAULTS["i2v"].max_steps,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = DEFAULTS["i2v"].batch_size,
    learning_rate: LearningRateOption = DEFAULTS["i2v"].learning_rate,
    schedule: ScheduleOption = DEFAULTS["i2v"].schedule,
    warmup_steps: WarmupOption = DEFAULTS["i2v"].warmup_steps,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The image-to-video teacher: the T2V teacher widened to 2C+1 inputs (copy and zero init), trained with the
    first-frame latent and the VLM's image tokens in front of the text tokens."""
    settings = {"out": out, "max_steps": max_steps, "seed": seed, "resume": resume, "workers": workers,
                "batch_size": batch_size, "learning_rate": learning_rate, "schedule": schedule,
                "warmup_steps": warmup_steps}
    _check_settings(settings)
    stage = _stage("i2v", preset, vae=vae, t2v=t2v, samples=samples, cache_dir=cache_dir, seed=seed)
    _train(context, lambda: stage, settings, ray_address, as_json, dataset_size=samples)


@train_app.command("all")
def train_all(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="One run folder per stage under it.")] = Path("out/train"),
    stage: Annotated[
        list[str] | None, typer.Option("--stage", help="Train only this stage (repeat for several): clip, vae, prior, t2v, i2v.")
    ] = None,
    seed: SeedOption = 0,
    workers: WorkersOption = 1,
    ship_to: Annotated[
        Path | None, typer.Option("--ship-to", help="Copy the finished weights here with a MANIFEST.json.")
    ] = None,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every stage in order as the Prefect flow 'train-toy-world' (progress artifacts per stage). Finished
    stages are kept and interrupted ones resume, so rerunning after a crash loses nothing."""
    from flows.cli_common import prefect_api, progress_bars
    from tasks.training import STAGES

    unknown = sorted(set(stage or ()) - set(STAGES))
    if unknown:
        raise UserError(f"unknown training stage(s) {', '.join(unknown)}; choose from: {', '.join(STAGES)}")
    quiet_model_libraries(diffusers=False, ray=workers > 1)
    from flows.train import train_toy_world

    labels = {name: f"train {name}" for name in STAGES}
    labels |= {f"{name}-cache": f"encode {name} windows" for name in ("t2v", "i2v")}
    with prefect_api(), progress_bars(labels):
        runs = train_toy_world(str(out_dir), stage, None, seed, workers, ray_address,
                               None if ship_to is None else str(ship_to))
    rows = [{"stage": r.stage, "steps": r.steps, "first_loss": r.first_loss, "last_loss": r.last_loss,
             "trained": r.trained, "folder": r.folder} for r in runs]
    if as_json:
        stdout.print_json(json.dumps(rows))
        return
    for row in rows:
        print_fields([(row["stage"], f"{row['steps']} steps, loss {row['first_loss']:.4g} -> {row['last_loss']:.4g}"
                       f"{'' if row['trained'] else ' (kept)'}, {row['folder']}")], 5)
