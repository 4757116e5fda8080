"""``magic141 train``: train the toy world's models, each stage by its own command."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from flows.cli.common import print_fields, quiet_model_libraries, stderr, stdout
from magic141.utils import InputError, one_line
from tasks.runtime.training import DEFAULTS, I2V_IMAGE_FRAMES, I2V_PLAIN_STEPS, PRIOR_AUTOENCODER_STEPS, SAMPLES

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
PrecisionOption = Annotated[
    str,
    typer.Option("--precision", help="float32; bfloat16: the forward pass under autocast (weights stay float32); "
                 "auto: bfloat16 where the GPU or CPU computes it natively, else float32."),
]
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


RUN_OPTIONS = ("out", "max_steps", "seed", "resume", "workers", "batch_size", "learning_rate", "schedule",
               "warmup_steps", "precision")


def _run_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The run's settings among a training command's options, checked before anything is computed."""
    settings = {name: options[name] for name in RUN_OPTIONS}
    _check_settings(settings)
    return settings


def _check_settings(settings: dict[str, Any]) -> Any:
    """The settings, and the output folder as far as it can be checked before the stage exists."""
    from magic141.training.loop import TrainingError, TrainSettings, check_folder

    try:
        checked = TrainSettings(**settings)
        check_folder(checked)
        return checked
    except TrainingError as exc:
        raise InputError(one_line(exc)) from None


def _train(
    context: typer.Context,
    stage_factory: Callable[[], Any],
    settings: dict[str, Any],
    ray_address: str | None,
    as_json: bool,
    dataset_size: int | None = None,
) -> None:
    from magic141.training.loop import TrainingError, check_output

    checked = _check_settings(settings)
    quiet_model_libraries(diffusers=False, ray=checked.workers > 1)
    from tasks.runtime.train_pool import train

    stage = stage_factory()
    try:
        check_output(stage, checked)  # a folder of another run is refused before the progress bar is drawn
    except TrainingError as exc:
        raise InputError(one_line(exc)) from None
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
            raise InputError(one_line(exc)) from None
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
    precision: PrecisionOption = DEFAULTS["clip"].precision,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The retrieval index's CLIP model, contrastive on toy-world frames and their descriptions.

    Its final/ folder is an open_clip model: 'magic141 index build CORPUS --model DIR' embeds with it.
    """
    settings = _run_settings(locals())
    stage = _stage("clip", "toy")
    _train(context, lambda: stage, settings, ray_address, as_json)


PresetOption = Annotated[str, typer.Option("--preset", help="Preset whose architecture and video geometry are trained.")]
VaeOption = Annotated[Path | None, typer.Option("--vae", help="Trained VAE folder (final/ of 'train vae').")]
SamplesOption = Annotated[int, typer.Option("--samples", help="Training windows encoded into the latent cache.")]
CacheOption = Annotated[Path, typer.Option("--cache-dir", help="Where latent caches are kept, one per VAE and dataset.")]


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
    precision: PrecisionOption = DEFAULTS["vae"].precision,
    refine: Annotated[
        Path | None,
        typer.Option("--refine", help="Train only the decoder of this trained VAE (final/ of 'train vae'), on the "
                     "student's samples; then the options not given default to "
                     f"{DEFAULTS['vae-decoder'].max_steps} steps, learning rate "
                     f"{DEFAULTS['vae-decoder'].learning_rate:g}, --out out/train/vae-decoder."),
    ] = None,
    student: Annotated[
        Path | None,
        typer.Option("--student", help="With --refine: the I2V student whose samples the decoder learns to read "
                     "(a weights folder, or final/ of 'train dmd2'); default: the preset's own weights."),
    ] = None,
    samples: SamplesOption = SAMPLES,
    cache_dir: CacheOption = Path("out/train/cache"),
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The video VAE (HunyuanVideo's causal 3D VAE at the preset's size) on toy-world clips and single frames.

    Its final/ folder is a diffusers AutoencoderKLHunyuanVideo, with the scaling factor measured on its latents.
    With --refine, the decoder alone of a trained VAE, its encoder frozen, so the latents, the transformers'
    caches and the transformers trained on them stay valid (the stage 'vae-decoder', its own defaults): it
    learns to decode the student's samples of training windows (from the transformers' latent cache of that
    VAE, built first when missing) into the windows' frames.
    """
    if refine is not None:  # the refinement's own defaults, for the options not given
        defaults = {**vars(DEFAULTS["vae-decoder"]), "out": Path("out/train/vae-decoder")}
        for name, value in defaults.items():
            if context.get_parameter_source(name).name == "DEFAULT":  # typer vendors its own click
                context.params[name] = value
    settings = _run_settings(context.params)
    if refine is None:
        _train(context, lambda: _stage("vae", preset), settings, ray_address, as_json)
        return
    _train(context, lambda: _stage("vae-decoder", preset, refine=refine, student=student, samples=samples,
                                   cache_dir=cache_dir, seed=seed), settings, ray_address, as_json, dataset_size=samples)


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
    precision: PrecisionOption = DEFAULTS["prior"].precision,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The text-to-image prior (the preset's SDXL-family pipeline) on toy-world first frames: its autoencoder
    first, then its UNet, with the text encoders frozen.

    Its final/ folder is a diffusers pipeline: put it in a weights folder as prior/.
    """
    settings = _run_settings(locals())
    if max_steps <= autoencoder_steps:
        raise InputError(f"--max-steps {max_steps} leaves no step for the UNet after {autoencoder_steps} autoencoder "
                        "steps; raise --max-steps or lower --autoencoder-steps")
    stage = _stage("prior", preset, autoencoder_steps=autoencoder_steps)
    _train(context, lambda: stage, settings, ray_address, as_json)


def _stage(name: str, preset: str, **options: Any) -> Any:
    """The stage, its transformer latent cache encoded first (with a bar) when this dataset has none yet."""
    from tasks.runtime.training import make_stage

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        bar = progress.add_task("encode windows", total=None, visible=False)

        def on_cache(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total, visible=True)

        try:
            return make_stage(name, preset, on_cache=on_cache, **options)
        except ValueError as exc:
            raise InputError(one_line(exc)) from None




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
    precision: PrecisionOption = DEFAULTS["t2v"].precision,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The text-to-video teacher: flow matching on the VAE latents of toy-world windows and their captions."""
    settings = _run_settings(locals())
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
    precision: PrecisionOption = DEFAULTS["i2v"].precision,
    plain_steps: Annotated[
        int, typer.Option("--plain-steps", help="First steps on plain windows: one object moving four ways, then every object; 0: none.")
    ] = I2V_PLAIN_STEPS,
    image_frames: Annotated[
        str, typer.Option("--image-frames", help="Which latent frames' image channels hold the first-frame latent: "
                          "'first' (the paper's layout, zeros elsewhere) or 'every' (the toy recipe's).")
    ] = I2V_IMAGE_FRAMES,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """The image-to-video teacher: the T2V teacher widened to 2C+1 inputs (copy and zero init), trained with the
    first-frame latent and the VLM's image tokens in front of the text tokens; its first steps on plain windows."""
    settings = _run_settings(locals())
    stage = _stage("i2v", preset, vae=vae, t2v=t2v, samples=samples, cache_dir=cache_dir, seed=seed,
                   plain_steps=plain_steps, image_frames=image_frames)
    _train(context, lambda: stage, settings, ray_address, as_json, dataset_size=samples)


TeacherOption = Annotated[
    Path | None,
    typer.Option("--teacher", help="The teacher's weights folder (default: the preset's own shipped weights)."),
]
DistilledPresetOption = Annotated[
    str, typer.Option("--preset", help="Preset whose teacher is distilled and whose video geometry is trained.")
]
WMinOption = Annotated[float, typer.Option("--w-min", help="Smallest w taught (guidance scale 1 + w; 0 is no guidance).")]
WMaxOption = Annotated[float, typer.Option("--w-max", help="Largest w taught.")]


@train_app.command("cfg")
def train_cfg(
    context: typer.Context,
    preset: DistilledPresetOption = "toy-i2v",
    teacher: TeacherOption = None,
    w_min: WMinOption = 0.0,
    w_max: WMaxOption = 5.0,
    lambda_cfg: Annotated[
        float, typer.Option("--lambda-cfg", help="Weight of the flow-matching loss at w = 0 beside the distillation.")
    ] = 0.25,
    samples: SamplesOption = SAMPLES,
    cache_dir: CacheOption = Path("out/train/cache"),
    out: OutOption = Path("out/train/cfg"),
    max_steps: StepsOption = DEFAULTS["cfg"].max_steps,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = DEFAULTS["cfg"].batch_size,
    learning_rate: LearningRateOption = DEFAULTS["cfg"].learning_rate,
    schedule: ScheduleOption = DEFAULTS["cfg"].schedule,
    warmup_steps: WarmupOption = DEFAULTS["cfg"].warmup_steps,
    precision: PrecisionOption = DEFAULTS["cfg"].precision,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """CFG distillation (paper Eq. 6-9): a student that takes the guidance scale 1 + w as an input and predicts,
    in one pass, what the teacher predicts with classifier-free guidance at w in two.

    Its final/ folder is the teacher's weights folder with the student's transformer.
    """
    settings = _run_settings(locals())
    distillation = {"w_min": w_min, "w_max": w_max, "lambda_cfg": lambda_cfg}
    _check_distillation("cfg", distillation)
    stage = _stage("cfg", preset, teacher=teacher, samples=samples, cache_dir=cache_dir, seed=seed,
                   distillation=distillation)
    _train(context, lambda: stage, settings, ray_address, as_json, dataset_size=samples)


@train_app.command("dmd2")
def train_dmd2(
    context: typer.Context,
    preset: DistilledPresetOption = "toy-teacher",
    teacher: TeacherOption = None,
    steps: Annotated[int, typer.Option("--steps", help="The student's sampling steps.")] = 4,
    sigmas: Annotated[
        str | None,
        typer.Option("--sigmas", help="The student's noise levels before the flow shift, comma-separated, one per "
                     "step (default: evenly from 1).")
    ] = None,
    fake: Annotated[
        str, typer.Option("--fake", help="The fake model: 'lora' (the teacher's base plus a LoRA, the paper's) or "
                          "'full' (a full copy).")
    ] = "lora",
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="Rank of the fake model's LoRA.")] = 16,
    real_shift: Annotated[
        float, typer.Option("--real-shift", help="The LoRA's weight in the real model (the paper's shift).")
    ] = 0.25,
    fake_updates: Annotated[int, typer.Option("--fake-updates", help="Fake-model updates per generator update.")] = 5,
    fake_lr_scale: Annotated[
        float, typer.Option("--fake-lr-scale", help="The fake model's learning rate over the generator's.")
    ] = 5.0,
    w_min: WMinOption = 0.0,
    w_max: WMaxOption = 5.0,
    regression_weight: Annotated[
        float, typer.Option("--regression-weight", help="Weight of a regression on the real model's ODE solution (0: off).")
    ] = 0.0,
    gan_weight: Annotated[
        float, typer.Option("--gan-weight", help="Weight of the generator's GAN loss against a classifier on the fake "
                            "model's features (DMD2's; 0: no classifier).")
    ] = 0.0,
    gan_critic_weight: Annotated[
        float, typer.Option("--gan-critic-weight", help="Weight of the classifier's loss (real training windows "
                            "against the generator's samples) beside the fake model's.")
    ] = 0.01,
    gan_lr_scale: Annotated[
        float, typer.Option("--gan-lr-scale", help="The classifier head's learning rate over the generator's.")
    ] = 50.0,
    backward_simulation: Annotated[
        bool, typer.Option("--backward-simulation/--noised-windows", help="The generator's input at a step: made by "
                           "its own earlier steps from noise (DMD2), or a training window noised to it.")
    ] = True,
    samples: SamplesOption = SAMPLES,
    cache_dir: CacheOption = Path("out/train/cache"),
    out: OutOption = Path("out/train/dmd2"),
    max_steps: StepsOption = DEFAULTS["dmd2"].max_steps,
    seed: SeedOption = 0,
    resume: ResumeOption = False,
    workers: WorkersOption = 1,
    batch_size: BatchOption = DEFAULTS["dmd2"].batch_size,
    learning_rate: LearningRateOption = DEFAULTS["dmd2"].learning_rate,
    schedule: ScheduleOption = DEFAULTS["dmd2"].schedule,
    warmup_steps: WarmupOption = DEFAULTS["dmd2"].warmup_steps,
    precision: PrecisionOption = DEFAULTS["dmd2"].precision,
    ray_address: RayAddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """DMD2 step distillation (paper Eq. 4-5): a few-step generator that matches the teacher's distribution,
    judged by a real and a fake model sharing one copy of the teacher's weights.

    Its final/ folder is the teacher's weights folder with the student's transformer (the EMA of its weights).
    """
    settings = _run_settings(locals())
    try:
        levels = None if sigmas is None else tuple(float(value) for value in sigmas.split(","))
    except ValueError:
        raise InputError(f"--sigmas {sigmas!r} is not a comma-separated list of numbers") from None
    distillation = {"steps": steps, "sigmas": levels, "fake": fake, "lora_rank": lora_rank, "real_shift": real_shift,
                    "fake_updates": fake_updates, "fake_lr_scale": fake_lr_scale, "w_min": w_min, "w_max": w_max,
                    "regression_weight": regression_weight, "backward_simulation": backward_simulation,
                    "gan_weight": gan_weight, "gan_critic_weight": gan_critic_weight, "gan_lr_scale": gan_lr_scale}
    _check_distillation("dmd2", distillation)
    stage = _stage("dmd2", preset, teacher=teacher, samples=samples, cache_dir=cache_dir, seed=seed,
                   distillation=distillation)
    _train(context, lambda: stage, settings, ray_address, as_json, dataset_size=samples)


def _check_distillation(kind: str, distillation: dict[str, Any]) -> None:
    """Refuse bad distillation settings before the teacher is read or any window encoded."""
    from magic141.training.distill import CfgSettings, Dmd2Settings
    from magic141.training.loop import TrainingError

    try:
        (CfgSettings if kind == "cfg" else Dmd2Settings)(**distillation)
    except TrainingError as exc:
        raise InputError(one_line(exc)) from None


@train_app.command("all")
def train_all(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="One run folder per stage under it.")] = Path("out/train"),
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help="Train only this stage (repeat for several): clip, vae, prior, t2v, i2v, cfg, "
                                     "dmd2 (the default: all of them), vae-decoder (the VAE's decoder refinement)."),
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
    from flows.cli.common import prefect_api, progress_bars
    from tasks.runtime.training import STAGES

    unknown = sorted(set(stage or ()) - set(STAGES))
    if unknown:
        raise InputError(f"unknown training stage(s) {', '.join(unknown)}; choose from: {', '.join(STAGES)}")
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
