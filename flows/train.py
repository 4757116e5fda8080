"""The ``train_toy_world`` flow: every shipped toy-world stage in order (CLIP, VAE, text-to-image prior, T2V
teacher, I2V teacher, its CFG distillation, then DMD2 of that; the VAE's decoder refinement on that student's samples last when asked),
then the shipped weights folder.

Each stage is a task with a progress artifact; a stage whose run folder already holds its finished run
is kept as it is, and one that was interrupted resumes from its last checkpoint, so rerunning the flow
after a crash loses nothing. The transformers' latent cache is encoded with the trained VAE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact

from magic141.training.loop import TrainSettings, read_losses
from magic141.utils import InputError
from tasks.runtime.progress import StageProgress
from tasks.runtime.train_pool import train
from tasks.runtime.training import DEFAULTS, SAMPLES, SHIPPED_STAGES, STAGES, make_stage

logger = logging.getLogger(__name__)
# Stored in float16 (half the bytes): open_clip and diffusers cast them into their float32 models on load.
SHIPPED_HALF = frozenset({"clip", "i2v", "cfg", "dmd2"})
NOT_SHIPPED = frozenset({"t2v"})  # the T2V teacher is only where the I2V teacher starts: its provenance ships
TEACHERS = {"cfg": "i2v", "dmd2": "cfg"}  # each distillation's teacher: the stage before it
CACHED = frozenset({"t2v", "i2v", "cfg", "dmd2", "vae-decoder"})  # stages that read the latent cache of SAMPLES windows, in epochs


@dataclass(frozen=True)
class StageRun:
    stage: str
    folder: str
    steps: int
    first_loss: float
    last_loss: float
    trained: bool  # False: the finished run was already there


def _finished(out: Path, steps: int) -> bool:
    losses = read_losses(out)
    return (out / "final").is_dir() and bool(losses) and losses[-1]["step"] >= steps


@task(name="train {stage}", retries=0)
def train_stage(stage: str, out: str, max_steps: int, seed: int, workers: int, ray_address: str | None,
                vae: str | None = None, t2v: str | None = None, teacher: str | None = None,
                refine: str | None = None, student: str | None = None, samples: int = SAMPLES) -> StageRun:
    folder = Path(out)
    defaults = DEFAULTS[stage]
    if _finished(folder, max_steps):
        losses = read_losses(folder)
        logger.info("%s: the finished run in %s is kept", stage, folder)
        return StageRun(stage, out, max_steps, losses[0]["loss"], losses[-1]["loss"], False)
    settings = TrainSettings(
        out=folder, max_steps=max_steps, seed=seed, batch_size=defaults.batch_size,
        learning_rate=defaults.learning_rate, schedule=defaults.schedule, warmup_steps=defaults.warmup_steps,
        precision=defaults.precision, resume=(folder / "run.json").is_file(), workers=workers,
    )
    cache = StageProgress(f"{stage}-cache", f"{stage}: encode training windows")
    built = make_stage(stage, vae=None if vae is None else Path(vae), t2v=None if t2v is None else Path(t2v),
                       teacher=None if teacher is None else Path(teacher),
                       refine=None if refine is None else Path(refine), student=None if student is None else Path(student),
                       samples=samples, cache_dir=folder.parent / "cache", seed=seed, on_cache=cache.update)
    progress = StageProgress(stage, f"train {stage}")
    result = train(built, settings, address=ray_address, on_step=lambda step, total, loss: progress.update(step, total),
                   dataset_size=samples if stage in CACHED else None, command=["flow train-toy-world", stage])
    return StageRun(stage, out, result.steps, result.first_loss, result.last_loss, True)


@flow(name="train-toy-world", log_prints=False)
def train_toy_world(
    out_dir: str = "out/train",
    stages: list[str] | None = None,
    max_steps: dict[str, int] | None = None,
    seed: int = 0,
    workers: int = 1,
    ray_address: str | None = None,
    ship_to: str | None = None,
    samples: int = SAMPLES,
) -> list[StageRun]:
    """Train ``stages`` (default: the shipped ones, in order) into ``out_dir/<stage>``, the transformers (and the
    decoder refinement) on a latent cache of ``samples`` training windows; ship them to ``ship_to`` when given."""
    chosen = list(SHIPPED_STAGES) if stages is None else stages
    unknown = sorted(set(chosen) - set(STAGES))
    if unknown:
        raise InputError(f"unknown training stage(s) {', '.join(unknown)}; choose from: {', '.join(STAGES)}")
    steps = {name: DEFAULTS[name].max_steps for name in STAGES} | (max_steps or {})
    root = Path(out_dir)
    runs = []
    for stage in STAGES:
        if stage not in chosen:
            continue
        vae = str(root / "vae" / "final") if stage in ("t2v", "i2v") else None
        t2v = str(root / "t2v" / "final") if stage == "i2v" else None
        teacher = str(root / TEACHERS[stage] / "final") if stage in TEACHERS else None
        refine = str(root / "vae" / "final") if stage == "vae-decoder" else None
        student = str(root / "dmd2" / "final") if stage == "vae-decoder" else None
        runs.append(train_stage(stage, str(root / stage), steps[stage], seed, workers, ray_address, vae, t2v, teacher,
                                refine, student, samples))
    create_table_artifact(
        key="train-toy-world",
        table=[{"stage": r.stage, "steps": r.steps, "first loss": round(r.first_loss, 5), "last loss": round(r.last_loss, 5),
                "trained now": r.trained, "curve": str(Path(r.folder) / "loss.png")} for r in runs],
        description="Toy-world training: each stage's loss at its first and last step",
    )
    if ship_to is not None:
        from magic141.training.ship import ship

        manifest = ship([Path(r.folder) for r in runs], Path(ship_to), SHIPPED_HALF, NOT_SHIPPED)
        logger.info("shipped %d files (%.1f MB) to %s", len(manifest["files"]), manifest["total_bytes"] / 1e6, ship_to)
    return runs
